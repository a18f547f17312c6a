"""Progress of a long evaluation: one callback type, shown as a tqdm bar by the CLI and as job progress by the
serving layer (``done`` of ``total`` units of work, with the current stage's name)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

ProgressFn = Callable[[int, int, str], None]  # (done, total, stage)


def no_progress(done: int, total: int, stage: str) -> None:
    return None


class Steps:
    """Counts units of work over the stages of an evaluation and reports each step to ``progress``."""

    def __init__(self, total: int, progress: ProgressFn | None = None):
        self.total, self.done = max(1, int(total)), 0
        self.progress = progress or no_progress

    def step(self, stage: str, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self.progress(self.done, self.total, stage)


@contextmanager
def tqdm_progress(desc: str, enabled: bool = True) -> Iterator[ProgressFn]:
    """A ProgressFn that drives one tqdm bar on stderr (the CLI's progress bar)."""
    from tqdm import tqdm

    bar = tqdm(total=1, desc=desc, disable=not enabled, unit="step", dynamic_ncols=True)

    def update(done: int, total: int, stage: str) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.set_postfix_str(stage[:40], refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
