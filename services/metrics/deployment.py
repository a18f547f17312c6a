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
    def __init__(self, store_url: str | None = None, inception_weights: str | None = None, device: str | None = "auto"):
        self.core = MetricsReplica(store_url, inception_weights, device)

    async def references(self) -> list[str]:
        return await asyncio.to_thread(self.core.references)

    async def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str = defaults.EXTRACTOR) -> dict:
        return await asyncio.to_thread(self.core.score, batch_id, reference, metrics, extractor)

    async def ready(self) -> bool:
        return True
