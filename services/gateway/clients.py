"""How the gateway reaches generators and the scorer: through Ray deployment handles, or in process.

Both implementations expose the same small async interface, so the REST/gRPC layers and the job runner are
identical whether they run as a Ray Serve application (:class:`HandleGenerators`, :class:`HandleScorer`) or
inside one Python process (:class:`LocalGenerators`, :class:`LocalScorer` — used by the fast tests and by
the benchmark's "no Serve" baseline).
"""

from __future__ import annotations

import asyncio
from typing import Mapping, Protocol

from services.generator.base import GenerationParams
from services.generator.deployment import ChunkResult, GenChunk, GeneratorReplica

from .errors import InvalidArgument


class Generators(Protocol):
    def model_ids(self) -> list[str]: ...

    async def info(self, model_id: str) -> dict: ...

    async def resolve_params(self, model_id: str, params: GenerationParams) -> dict: ...

    async def generate(self, model_id: str, chunk: GenChunk) -> ChunkResult: ...

    def is_transient(self, exc: BaseException) -> bool:
        """True when ``exc`` says the replica died or was unavailable (worth retrying the same chunk), False for
        errors of the model or the request (retrying would fail the same way)."""
        ...


class Scorer(Protocol):
    async def references(self) -> list[str]: ...

    async def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str) -> dict: ...

    async def ready(self) -> bool: ...


def _unknown_model(model_id: str, known: list[str]) -> InvalidArgument:
    return InvalidArgument(f"unknown model {model_id!r}; this platform serves: {', '.join(sorted(known)) or '(none)'}")


class LocalGenerators:
    """Generators in this process (each call runs in a worker thread; one forward pass per call)."""

    def __init__(self, replicas: Mapping[str, GeneratorReplica], max_batch_size: int = 16):
        self.replicas = dict(replicas)
        self.max_batch_size = max_batch_size

    def model_ids(self) -> list[str]:
        return list(self.replicas)

    def _get(self, model_id: str) -> GeneratorReplica:
        if model_id not in self.replicas:
            raise _unknown_model(model_id, self.model_ids())
        return self.replicas[model_id]

    async def info(self, model_id: str) -> dict:
        info = await asyncio.to_thread(self._get(model_id).info)
        info.setdefault("max_batch_size", self.max_batch_size)
        return info

    async def resolve_params(self, model_id: str, params: GenerationParams) -> dict:
        return self._get(model_id).resolve_params(params)

    async def generate(self, model_id: str, chunk: GenChunk) -> ChunkResult:
        return await asyncio.to_thread(self._get(model_id).generate_now, chunk)

    def is_transient(self, exc: BaseException) -> bool:
        return False  # in process: no replica to lose


class HandleGenerators:
    """Generator deployments reached through Serve deployment handles (``method`` picks batched or not)."""

    def __init__(self, handles: Mapping[str, object], method: str = "generate"):
        self.handles = dict(handles)
        self.method = method

    def model_ids(self) -> list[str]:
        return list(self.handles)

    def _get(self, model_id: str):
        if model_id not in self.handles:
            raise _unknown_model(model_id, self.model_ids())
        return self.handles[model_id]

    async def info(self, model_id: str) -> dict:
        return await self._get(model_id).info.remote()

    async def resolve_params(self, model_id: str, params: GenerationParams) -> dict:
        return await self._get(model_id).resolve_params.remote(params)

    async def generate(self, model_id: str, chunk: GenChunk) -> ChunkResult:
        return await getattr(self._get(model_id), self.method).remote(chunk)

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient_ray_error(exc)


def is_transient_ray_error(exc: BaseException) -> bool:
    """A Ray / Serve failure of the machinery, not of the model: the replica or its node died, the actor is
    unavailable (restarting), the deployment is backed up or has no replica yet. ``RayTaskError`` (the
    model raised) is not transient."""
    import ray.exceptions as rex
    from ray.serve import exceptions as sex

    if isinstance(exc, rex.RayTaskError):
        return False
    transient = (rex.RayActorError, rex.WorkerCrashedError, rex.LocalRayletDiedError, rex.NodeDiedError,
                 rex.ObjectLostError, rex.RaySystemError, sex.BackPressureError, sex.DeploymentUnavailableError)
    transient += tuple(t for t in (getattr(sex, "ReplicaUnavailableError", None),) if t is not None)
    return isinstance(exc, transient)


class LocalScorer:
    def __init__(self, replica):
        self.replica = replica

    async def references(self) -> list[str]:
        return await asyncio.to_thread(self.replica.references)

    async def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str) -> dict:
        return await asyncio.to_thread(self.replica.score, batch_id, reference, metrics, extractor)

    async def ready(self) -> bool:
        return True


class HandleScorer:
    def __init__(self, handle):
        self.handle = handle

    async def references(self) -> list[str]:
        return await self.handle.references.remote()

    async def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str) -> dict:
        return await self.handle.score.remote(batch_id, reference, metrics, extractor)

    async def ready(self) -> bool:
        return bool(await self.handle.ready.remote())
