"""Run calls at the same moment on threads (the concurrency tests of the generator families)."""

from __future__ import annotations

import threading
from typing import Any, Callable


def run_together(calls: list[Callable[[], Any]]) -> dict[int, Any]:
    """Run each zero-argument call on its own thread, all released at once by a barrier; fails naming the
    errors if any call raised, else returns ``{index: result}``."""
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(calls))

    def work(j):
        try:
            barrier.wait()
            results[j] = calls[j]()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results
