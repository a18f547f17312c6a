"""Ray Serve deployment of the metrics core: a thin wrapper over :class:`~services.metrics.replica.MetricsReplica`
(Ray-free). ``score`` returns ``ScoreSummary.model_dump(mode="json")`` (see ``summary.py``): the JSON, not the
model, crosses Ray (the model holds the sets' feature arrays); the gateway validates it back into the model."""

from __future__ import annotations

import asyncio

from ray import serve

from services.metrics import defaults
from services.metrics.replica import MetricsReplica


@serve.deployment(
    name="metrics",
    max_ongoing_requests=8,
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1},
    health_check_period_s=10,
)
class MetricsDeployment:
    def __init__(self, store_url: str | None = None, inception_weights: str | None = None, device: str | None = "auto",
                 cache_url: str | None = None):
        # cache_url: the shared feature cache and user references (a folder or s3://…; default from the settings)
        self.core = MetricsReplica(store_url, inception_weights, device, cache_url)

    async def references(self) -> list[str]:
        return await asyncio.to_thread(self.core.references)

    async def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str = defaults.EXTRACTOR) -> dict:
        return await asyncio.to_thread(self.core.score, batch_id, reference, metrics, extractor)

    async def evaluate(self, kind: str, batch_ids: list[str], options: dict):
        """A streaming method (call with ``handle.options(stream=True)``): yields ``{"progress": [done, total,
        stage]}`` while the evaluation runs in a thread, then ``{"result": EvaluationResult JSON}``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def progress(done: int, total: int, stage: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, {"progress": [int(done), int(total), str(stage)]})

        task = asyncio.ensure_future(asyncio.to_thread(self.core.evaluate, kind, batch_ids, options, progress))
        while not task.done() or not queue.empty():
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        yield {"result": task.result()}  # raises the evaluation's error (the gateway maps it)

    async def ready(self) -> bool:
        return True
