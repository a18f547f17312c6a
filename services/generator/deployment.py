"""Ray Serve deployment of one generator model, with dynamic batching that actually fills.

One replica holds one :class:`~services.generator.base.LoadedGenerator` (model x backend x device).
Callers (the gateway) send :class:`GenChunk` requests — a few images that share generation params —
to :meth:`GeneratorDeployment.generate`. ``@serve.batch`` collects chunks from concurrent requests up to
``max_batch_size`` *images* (``batch_size_fn`` counts images, not requests) or until
``batch_wait_timeout_s`` passes; inside the batch handler chunks are grouped by
``GenerationParams.batch_key()`` (same steps / sampler / guidance / truncation / resolution — the model and
backend are fixed per replica) and every group runs as ONE forward pass. Because a generator's image ``i``
depends only on its own seed and condition, batching never changes pixels.

The pure part (:class:`GenChunk`, :class:`ChunkResult`, :class:`GeneratorReplica`) has no Ray dependency in
its logic, so the gateway's in-process client and the tests use exactly the same grouping code.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from ray import serve

from services.common.findings import Condition
from services.common.logging import get_logger
from services.generator.base import GenerationParams, GeneratorError, LoadedGenerator

log = get_logger(__name__)

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_S = 0.02


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


@dataclass
class ChunkResult:
    """Images ``(N, H, W)`` float32 in [0, 1] plus what the replica measured while making them."""

    images: np.ndarray
    stats: dict


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


def chunk_images(chunks: Sequence[GenChunk]) -> int:
    """``batch_size_fn`` of ``@serve.batch``: a batch's size is its number of images."""
    return sum(len(c) for c in chunks)


def gpu_stats(device: str) -> dict:
    """GPU memory / utilisation of this replica's device (empty on CPU or when unavailable)."""
    if not str(device).startswith("cuda"):
        return {}
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
        idx = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(idx)
        out = {"gpu": str(idx), "gpu_memory_used_bytes": float(total - free), "gpu_memory_total_bytes": float(total),
               "gpu_memory_allocated_bytes": float(torch.cuda.memory_allocated(idx))}
        util = _gpu_utilization(idx)
        if util is not None:
            out["gpu_utilization_ratio"] = util
        return out
    except Exception:
        return {}


_warned_lock = threading.Lock()
_warned: set[str] = set()


def _warn_once(key: str, msg: str, *args) -> None:
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(msg, *args)


def _gpu_utilization(idx: int) -> float | None:
    """GPU utilisation 0-1 of device ``idx`` through NVML (``torch.cuda.utilization``), ``None`` when unreadable.

    NVML comes from the optional ``nvidia-ml-py`` package (``pip install 'synthrad[gpu]'``); without it the
    metric is left out and the replica says so once in its log, rather than never exposing it silently.
    """
    import torch

    try:
        return float(torch.cuda.utilization(idx)) / 100.0
    except ModuleNotFoundError as e:  # torch found no pynvml (nvidia-ml-py) at import time
        _warn_once("nvml-missing", "GPU present but nvidia-ml-py (pynvml) is not installed: "
                   "synthrad_gpu_utilization_ratio will not be reported; install synthrad[gpu] (%s)", e)
    except Exception:  # noqa: BLE001 - NVML errors (no permission, MIG, ...) only cost the metric
        pass
    return None


class GeneratorReplica:
    """Serve-free core of a generator replica: loading, grouping by batch key, running forward passes."""

    def __init__(self, model_id: str, backend: str = "auto", device: str = "auto",
                 generator: LoadedGenerator | None = None, torch_threads: int | None = None):
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        if generator is None:
            from services.generator.registry import load_generator

            generator = load_generator(model_id, backend, device)
        self.gen = generator
        self.model_id = model_id
        self._batch_seq = itertools.count()
        self._lock = threading.Lock()  # one forward pass at a time per replica
        self.replica_id = f"{os.uname().nodename}:{os.getpid()}"

    # ---- introspection ------------------------------------------------------------------------
    def info(self) -> dict:
        from services.generator.registry import model_info

        try:
            info = model_info(self.model_id).model_dump()
        except GeneratorError:  # a generator built in process (tests) has no descriptor
            info = self.gen.info().model_dump()
        info.update(backend=self.gen.backend, device=str(self.gen.device), replica=self.replica_id,
                    model_hash=self.gen.model_hash, resolution=self.gen.resolution,
                    resolutions=self.gen.describe_resolutions())
        return info

    def resolve_params(self, params: GenerationParams | None) -> dict:
        """The params a generation with ``params`` would use, model defaults filled in (what batch manifests
        record). Raises :class:`GeneratorError` naming a param this model's family does not use."""
        self.gen.check_params(params)
        return self.gen.resolved_params(params)

    # ---- generation ---------------------------------------------------------------------------
    def _forward(self, conditions, seeds, params, prompts) -> np.ndarray:
        with self._lock:
            out = self.gen.generate(conditions, seeds, params, prompts)
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 3 or out.shape[0] != len(seeds):
            raise GeneratorError(f"model {self.model_id} returned shape {out.shape} for {len(seeds)} seeds")
        return out

    def run_chunks(self, chunks: Sequence[GenChunk]) -> list[ChunkResult | BaseException]:
        """Generate every chunk; chunks with equal ``params.batch_key()`` share one forward pass.

        Returns one result per chunk, or the exception that group raised (other groups still succeed).
        """
        started = time.time()
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(chunks):
            groups.setdefault(c.params.batch_key(), []).append(i)
        results: list[ChunkResult | BaseException | None] = [None] * len(chunks)
        total = chunk_images(chunks)
        for idxs in groups.values():
            members = [chunks[i] for i in idxs]
            conds = [c for m in members for c in m.conditions]
            seeds = [int(s) for m in members for s in m.seeds]
            prompts = None
            if any(m.prompts is not None for m in members):
                prompts = [p for m in members for p in (m.prompts if m.prompts is not None else [None] * len(m))]
            seq = next(self._batch_seq)
            t0 = time.perf_counter()
            try:
                LoadedGenerator.check_inputs(conds, seeds, prompts)
                out = self._forward(conds, seeds, members[0].params, prompts)
            except BaseException as e:  # noqa: BLE001 - handed back to each caller of the group
                for i in idxs:
                    results[i] = e
                continue
            compute = time.perf_counter() - t0
            gpu = gpu_stats(str(self.gen.device))
            offset = 0
            for i, m in zip(idxs, members):
                n = len(m)
                results[i] = ChunkResult(
                    images=out[offset:offset + n],
                    stats={
                        "model": self.model_id, "backend": self.gen.backend, "device": str(self.gen.device),
                        "replica": self.replica_id, "batch_seq": seq, "batch_images": len(seeds),
                        "batch_requests": len(idxs), "batch_groups": len(groups), "window_images": total,
                        "queue_s": max(0.0, started - m.submitted), "compute_s": compute, **gpu,
                    },
                )
                offset += n
        return results  # type: ignore[return-value]

    def generate_now(self, chunk: GenChunk) -> ChunkResult:
        """Unbatched path: one chunk, one forward pass (benchmarks compare it with the batched path)."""
        res = self.run_chunks([chunk])[0]
        if isinstance(res, BaseException):
            raise res
        return res


@serve.deployment(
    name="generator",
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.5},
    health_check_period_s=10,
    graceful_shutdown_timeout_s=20,
)
class GeneratorDeployment:
    """One replica = one loaded model. Methods are called through deployment handles by the gateway."""

    def __init__(self, model_id: str, backend: str = "auto", device: str = "auto",
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
                 torch_threads: int | None = None, generator_factory: str | None = None):
        generator = None
        if generator_factory:  # "module:function" returning a LoadedGenerator (tests, custom builds)
            import importlib

            mod, fn = generator_factory.split(":")
            generator = getattr(importlib.import_module(mod), fn)(model_id, backend, device)
        self.core = GeneratorReplica(model_id, backend, device, generator=generator, torch_threads=torch_threads)
        self.max_batch_size = int(max_batch_size)
        self._batched.set_max_batch_size(self.max_batch_size)
        self._batched.set_batch_wait_timeout_s(float(batch_wait_s))
        try:
            self.core.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:
            pass

    async def info(self) -> dict:
        info = self.core.info()
        info["max_batch_size"] = self.max_batch_size
        return info

    async def resolve_params(self, params: GenerationParams | None) -> dict:
        """Validate ``params`` for this model and fill in its defaults (the gateway asks before queueing)."""
        try:
            return self.core.resolve_params(params)
        except Exception as e:  # noqa: BLE001 - re-raised in a form Ray can hand to the gateway
            raise portable_error(e) from None

    async def generate(self, chunk: GenChunk) -> ChunkResult:
        """Batched generation (the normal path)."""
        if len(chunk) > self.max_batch_size:
            raise GeneratorError(f"chunk of {len(chunk)} images exceeds max_batch_size {self.max_batch_size}")
        chunk.submitted = time.time()
        res = await self._batched(chunk)
        if isinstance(res, BaseException):  # this chunk's group failed; other groups were unaffected
            raise portable_error(res)
        return res

    async def generate_unbatched(self, chunk: GenChunk) -> ChunkResult:
        """One request, one forward pass, no waiting for others (benchmark baseline)."""
        chunk.submitted = time.time()
        try:
            return await asyncio.to_thread(self.core.generate_now, chunk)
        except Exception as e:  # noqa: BLE001
            raise portable_error(e) from None

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S,
                 batch_size_fn=chunk_images)
    async def _batched(self, chunks: list[GenChunk]) -> list[ChunkResult | BaseException]:
        # An exception raised here would fail every request of the batch; instead a failed group's
        # exception is returned as that chunk's value and re-raised by `generate` for its caller only.
        return await asyncio.to_thread(self.core.run_chunks, chunks)

    async def check_health(self) -> None:  # Serve calls this periodically
        if self.core.gen is None:
            raise RuntimeError("generator not loaded")
