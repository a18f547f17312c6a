"""How the gateway reaches generators and the scorer: through Ray deployment handles, or in process.

Both implementations expose the same small async interface, so the REST/gRPC layers and the job runner are
identical whether they run as a Ray Serve application (:class:`HandleGenerators`, :class:`HandleScorer`) or
inside one Python process (the generator layer's
:class:`~services.generator.generation.LocalGenerators`, :class:`LocalScorer` — used by the fast tests and
by the benchmark's "no Serve" baseline).
"""

from __future__ import annotations

import asyncio
from typing import Callable, Mapping, Protocol

from services.generator.base import GenerationParams
from services.generator.chunks import ChunkResult, GenChunk
from services.generator.registry import UnknownModel
from services.generator.replica import ServedModel
from services.metrics.summary import ScoreSummary


#: (done, total, stage) of a running evaluation
EvaluationProgress = Callable[[int, int, str], None]


class Scorer(Protocol):
    async def references(self) -> list[str]: ...

    async def evaluate(self, kind: str, batch_ids: list[str], options: dict, progress: EvaluationProgress) -> dict: ...

    async def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str) -> ScoreSummary: ...

    async def ready(self) -> bool: ...


class HandleGenerators:
    """Generator deployments reached through Serve deployment handles (``method`` picks batched or not)."""

    def __init__(self, handles: Mapping[str, object], method: str = "generate"):
        self.handles = dict(handles)
        self.method = method

    def model_ids(self) -> list[str]:
        return list(self.handles)

    def _get(self, model_id: str):
        if model_id not in self.handles:
            raise UnknownModel(f"unknown model {model_id!r}; this platform serves: "
                               f"{', '.join(sorted(self.handles)) or '(none)'}")
        return self.handles[model_id]

    async def info(self, model_id: str) -> ServedModel:
        return await self._get(model_id).info.remote()

    async def resolve_params(self, model_id: str, params: GenerationParams) -> dict:
        return await self._get(model_id).resolve_params.remote(params)

    async def generate(self, model_id: str, chunk: GenChunk) -> ChunkResult:
        return await getattr(self._get(model_id), self.method).remote(chunk)

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient_ray_error(exc)

    def is_overload(self, exc: BaseException) -> bool:
        from ray.serve.exceptions import BackPressureError

        return isinstance(exc, BackPressureError)


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

    async def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str) -> ScoreSummary:
        data = await asyncio.to_thread(self.replica.score, batch_id, reference, metrics, extractor)
        return ScoreSummary.model_validate(data)

    async def evaluate(self, kind: str, batch_ids: list[str], options: dict, progress: EvaluationProgress) -> dict:
        loop = asyncio.get_running_loop()

        def report(done: int, total: int, stage: str) -> None:
            loop.call_soon_threadsafe(progress, done, total, stage)

        return await asyncio.to_thread(self.replica.evaluate, kind, batch_ids, options, report)

    async def ready(self) -> bool:
        return True


class HandleScorer:
    def __init__(self, handle):
        self.handle = handle

    async def references(self) -> list[str]:
        return await self.handle.references.remote()

    async def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str) -> ScoreSummary:
        return ScoreSummary.model_validate(await self.handle.score.remote(batch_id, reference, metrics, extractor))

    async def evaluate(self, kind: str, batch_ids: list[str], options: dict, progress: EvaluationProgress) -> dict:
        result = None
        async for item in self.handle.options(stream=True).evaluate.remote(kind, batch_ids, options):
            if "progress" in item:
                progress(*item["progress"])
            else:
                result = item["result"]
        if result is None:
            raise RuntimeError("the metrics deployment ended an evaluation without a result")
        return result

    async def ready(self) -> bool:
        return bool(await self.handle.ready.remote())
