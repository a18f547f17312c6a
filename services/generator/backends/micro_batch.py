"""Fixed-size micro-batches: how every family calls its runner so that pixels never depend on batch composition.

oneDNN (eager) and ONNX Runtime pick kernels, blockings and thread partitions by tensor shape; the same image
in a batch of 3 and in a batch of 16 can differ by ~1e-6. A family that only ever calls its runner with one
shape — ``size`` images, the last micro-batch of a request padded — computes each image the same way wherever
it sits and whatever shares its pass, so image ``i``'s pixels are bit-identical whether it is generated alone
or inside any larger request (tested per family and backend, not assumed).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from services.common.findings import Condition
from services.generator.base import GeneratorError


def fixed_micro_batches(conditions: Sequence[Condition], seeds: Sequence[int], size: int,
                        ) -> Iterator[tuple[list[Condition], list[int], int]]:
    """A request cut into micro-batches of exactly ``size`` images: ``(conditions, seeds, n)`` per micro-batch,
    the last one padded to ``size`` by repeating its last image (``n`` real images first, padding after).
    Padding repeats a real image so it needs nothing a real image does not (e.g. no extra truncation centre);
    callers keep the first ``n`` outputs (:func:`in_fixed_micro_batches`)."""
    size = int(size)
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    if len(conditions) != len(seeds):
        raise GeneratorError(f"got {len(conditions)} conditions for {len(seeds)} seeds; give one per image")
    for s in range(0, len(seeds), size):
        conds = list(conditions[s:s + size])
        sds = [int(v) for v in seeds[s:s + size]]
        n = len(sds)
        if n < size:
            conds += [conds[-1]] * (size - n)
            sds += [sds[-1]] * (size - n)
        yield conds, sds, n


def micro_batch_size(configured: int | None, device: str, *, cuda: int, cpu: int) -> int:
    """A family's micro-batch size: ``configured`` (a ``settings.runtime.*_micro_batch``) when set and not 0,
    else the family's default for the device."""
    if configured:
        return int(configured)
    return int(cuda) if str(device).startswith("cuda") else int(cpu)


def in_fixed_micro_batches(run: Callable[[list[Condition], list[int]], np.ndarray], conditions: Sequence[Condition],
                           seeds: Sequence[int], size: int) -> np.ndarray:
    """``run(conditions, seeds) -> (size, H, W)`` over :func:`fixed_micro_batches`, padding dropped:
    ``(len(seeds), H, W)``. ``run`` is only ever called with exactly ``size`` images."""
    outs = [np.asarray(run(c, s))[:n] for c, s, n in fixed_micro_batches(conditions, seeds, size)]
    return np.concatenate(outs, axis=0)
