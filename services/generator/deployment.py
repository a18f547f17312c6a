"""Ray Serve deployment of one generator model, with dynamic batching that actually fills.

One replica holds one :class:`~services.generator.replica.GeneratorReplica` (model x backend x device).
Callers (the gateway) send :class:`~services.generator.chunks.GenChunk` requests — a few images that share
generation params — to :meth:`GeneratorDeployment.generate`. ``@serve.batch`` collects chunks from concurrent
requests up to ``max_batch_size`` *images* (``batch_size_fn`` counts images, not requests) or until
``batch_wait_timeout_s`` passes; the replica core then runs every group of chunks with equal
``GenerationParams.batch_key()`` as ONE forward pass. This module only wraps that core for Serve.
"""

from __future__ import annotations

import asyncio
import time

from ray import serve

from services.generator.base import GenerationParams, GeneratorError
from services.generator.chunks import ChunkResult, GenChunk, chunk_images, portable_error
from services.generator.replica import GeneratorReplica, ServedModel

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_S = 0.02


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
        self.core = GeneratorReplica(model_id, backend, device, generator=generator, torch_threads=torch_threads,
                                     max_batch_size=max_batch_size)
        self.max_batch_size = int(max_batch_size)
        self._batched.set_max_batch_size(self.max_batch_size)
        self._batched.set_batch_wait_timeout_s(float(batch_wait_s))
        try:
            self.core.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:
            pass

    async def info(self) -> ServedModel:
        return self.core.info()

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
