"""How the generation use case reaches models: the :class:`Generators` interface, and
:class:`LocalGenerators`, its in-process implementation (the CLI, the fast tests, the "no Serve" benchmark
baseline). The gateway's implementation over Ray Serve deployment handles is
``services.gateway.clients.HandleGenerators``.
"""

from __future__ import annotations

import asyncio
from typing import Mapping, Protocol

from services.generator.base import GenerationParams
from services.generator.chunks import ChunkResult, GenChunk
from services.generator.registry import UnknownModel
from services.generator.replica import GeneratorReplica, ServedModel


class Generators(Protocol):
    def model_ids(self) -> list[str]: ...

    async def info(self, model_id: str) -> ServedModel: ...

    async def resolve_params(self, model_id: str, params: GenerationParams) -> dict: ...

    async def generate(self, model_id: str, chunk: GenChunk) -> ChunkResult: ...

    def is_transient(self, exc: BaseException) -> bool:
        """True when ``exc`` says the replica died or was unavailable (worth retrying the same chunk), False for
        errors of the model or the request (retrying would fail the same way)."""
        ...

    def is_overload(self, exc: BaseException) -> bool:
        """True when ``exc`` says the model's queue is full (Serve's ``max_queued_requests``): an inline request
        is shed at once (503 + Retry-After), a batch job backs off and retries."""
        ...


class LocalGenerators:
    """Generators in this process (each call runs in a worker thread; one forward pass per call).
    ``max_batch_size`` overrides the replicas' own chunk size."""

    def __init__(self, replicas: Mapping[str, GeneratorReplica], max_batch_size: int | None = None):
        self.replicas = dict(replicas)
        self.max_batch_size = max_batch_size

    def model_ids(self) -> list[str]:
        return list(self.replicas)

    def _get(self, model_id: str) -> GeneratorReplica:
        if model_id not in self.replicas:
            raise UnknownModel(f"unknown model {model_id!r}; this platform serves: "
                               f"{', '.join(sorted(self.replicas)) or '(none)'}")
        return self.replicas[model_id]

    async def info(self, model_id: str) -> ServedModel:
        info = await asyncio.to_thread(self._get(model_id).info)
        if self.max_batch_size is not None:
            info = info.model_copy(update={"max_batch_size": int(self.max_batch_size)})
        return info

    async def resolve_params(self, model_id: str, params: GenerationParams) -> dict:
        return self._get(model_id).resolve_params(params)

    async def generate(self, model_id: str, chunk: GenChunk) -> ChunkResult:
        return await asyncio.to_thread(self._get(model_id).generate_now, chunk)

    def is_transient(self, exc: BaseException) -> bool:
        return False  # in process: no replica to lose

    def is_overload(self, exc: BaseException) -> bool:
        return False  # in process: no queue to fill
