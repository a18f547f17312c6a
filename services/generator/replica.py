"""The Ray-free core of a generator replica: one loaded model, chunks grouped into forward passes.

:class:`GeneratorReplica` is what a Serve replica (``deployment.py``), the in-process generators of the CLI and
the fast tests (:class:`~services.generator.generation.LocalGenerators`) all run, so batching is the same code
everywhere: chunks with equal ``GenerationParams.batch_key()`` share ONE forward pass, and because image ``i``
depends only on its own seed and condition, batching never changes pixels.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Sequence

import numpy as np
from pydantic import ConfigDict

from services.common.logging import get_logger
from services.generator.base import GenerationParams, GeneratorError, LoadedGenerator, ModelInfo
from services.generator.chunks import ChunkResult, ChunkStats, GenChunk, GpuStats, chunk_images

log = get_logger(__name__)


class ServedModel(ModelInfo):
    """A model as one replica serves it: the registry's :class:`ModelInfo` plus backend, device and batch size."""

    model_config = ConfigDict(protected_namespaces=())

    backend: str = ""
    device: str = ""
    resolutions: str | None = None
    max_batch_size: int = 16
    #: host:pid (or Serve replica id) of the replica that answered: internal, never sent to API clients
    replica: str | None = None


def gpu_stats(device: str) -> GpuStats | None:
    """GPU memory / utilisation of this replica's device (``None`` on CPU or when unavailable)."""
    if not str(device).startswith("cuda"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        idx = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(idx)
        return GpuStats(gpu=str(idx), memory_used_bytes=float(total - free), memory_total_bytes=float(total),
                        memory_allocated_bytes=float(torch.cuda.memory_allocated(idx)),
                        utilization_ratio=_gpu_utilization(idx))
    except Exception:  # noqa: BLE001 - only the stats are lost
        return None


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
                 generator: LoadedGenerator | None = None, torch_threads: int | None = None,
                 max_batch_size: int | None = None):
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        if generator is None:
            from services.generator.registry import load_generator

            generator = load_generator(model_id, backend, device)
        if max_batch_size is None:
            from services.common.config import get_settings

            max_batch_size = get_settings().serve.generator_max_batch_size
        self.gen = generator
        self.model_id = model_id
        self.max_batch_size = int(max_batch_size)
        self._batch_seq = itertools.count()
        self._lock = threading.Lock()  # one forward pass at a time per replica
        self.replica_id = f"{os.uname().nodename}:{os.getpid()}"

    # ---- introspection ------------------------------------------------------------------------
    def info(self) -> ServedModel:
        from services.generator.registry import model_info

        try:
            base = model_info(self.model_id)
        except GeneratorError:  # a generator built in process (tests, --model-path) has no descriptor
            base = self.gen.info()
        data = base.model_dump()
        data.update(model_id=self.model_id, backend=self.gen.backend, device=str(self.gen.device), replica=self.replica_id,
                    model_hash=self.gen.model_hash, resolution=self.gen.resolution,
                    resolutions=self.gen.describe_resolutions(), max_batch_size=self.max_batch_size,
                    text_conditioned=self.gen.text_conditioned)
        return ServedModel(**data)

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
            for k, (i, m) in enumerate(zip(idxs, members)):
                n = len(m)
                results[i] = ChunkResult(images=out[offset:offset + n], stats=ChunkStats(
                    model=self.model_id, backend=self.gen.backend, device=str(self.gen.device),
                    replica=self.replica_id, batch_seq=seq, batch_images=len(seeds), batch_requests=len(idxs),
                    batch_groups=len(groups), window_images=total, queue_s=max(0.0, started - m.submitted),
                    compute_s=compute, first_of_pass=k == 0, gpu=gpu))
                offset += n
        return results  # type: ignore[return-value]

    def generate_now(self, chunk: GenChunk) -> ChunkResult:
        """Unbatched path: one chunk, one forward pass (benchmarks compare it with the batched path)."""
        res = self.run_chunks([chunk])[0]
        if isinstance(res, BaseException):
            raise res
        return res
