"""The wire types between the generation use case and a generator replica (Ray-free).

A :class:`GenChunk` is a few images to make with one set of params (at most the replica's ``max_batch_size``);
a replica answers with a :class:`ChunkResult`: the images plus :class:`ChunkStats`, what it measured while
making them. Both cross Ray by pickling, as do the errors :func:`portable_error` makes safe to send.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from services.common.findings import Condition
from services.generator.base import GenerationParams, GeneratorError


@dataclass
class GenChunk:
    """A few images to generate with one set of params (at most the replica's max batch size)."""

    conditions: list[Condition]
    seeds: list[int]
    params: GenerationParams = field(default_factory=GenerationParams)
    prompts: list[str | None] | None = None
    submitted: float = field(default_factory=time.time)

    def __len__(self) -> int:
        return len(self.seeds)


@dataclass(frozen=True)
class GpuStats:
    """Memory and utilisation of a replica's GPU at the end of a forward pass."""

    gpu: str
    memory_used_bytes: float
    memory_total_bytes: float
    memory_allocated_bytes: float
    utilization_ratio: float | None = None


@dataclass(frozen=True)
class ChunkStats:
    """What the replica measured for one chunk. ``batch_seq`` numbers the replica's forward passes; the chunks of
    one pass share it, and exactly one of them has ``first_of_pass`` set (so a pass is counted once)."""

    model: str
    backend: str
    device: str
    replica: str
    batch_seq: int
    batch_images: int
    batch_requests: int
    batch_groups: int
    window_images: int
    queue_s: float
    compute_s: float
    first_of_pass: bool = True
    gpu: GpuStats | None = None


@dataclass
class ChunkResult:
    """Images ``(N, H, W)`` float32 in [0, 1] plus what the replica measured while making them."""

    images: np.ndarray
    stats: ChunkStats


def chunk_images(chunks: Sequence[GenChunk]) -> int:
    """``batch_size_fn`` of ``@serve.batch``: a batch's size is its number of images."""
    return sum(len(c) for c in chunks)


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives the pickle round trip Ray puts it through on its way to the gateway, else a plain
    stand-in with the same message (a :class:`GeneratorError` stays one, so it still maps to 4xx).

    An exception class whose ``__init__`` takes other arguments than its ``args`` cannot be rebuilt by Ray: the
    caller would get ``UnserializableException`` (an HTTP 500 with a remote traceback) instead of the error."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure to round-trip
        if isinstance(exc, GeneratorError):
            return GeneratorError(str(exc))
        return RuntimeError(f"{type(exc).__name__}: {exc}")
