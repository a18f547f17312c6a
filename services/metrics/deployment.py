"""Ray Serve deployment of the metrics core: score a stored batch against a registered real reference.

:class:`MetricsReplica` is the Serve-free part (the gateway's in-process client uses it directly);
:class:`MetricsDeployment` wraps it for Serve. Scoring reads the batch through the batch store (streaming,
features cached by content hash by the metrics core) and returns a JSON-able dict::

    {"batch_id", "reference", "extractor": {name, weights_hash, preprocessing, dtype},
     "scores": [{"name", "value", "std"?, "ci_low"?, "ci_high"?}], "n_real", "n_synthetic", "result": {...}}

Only scores made with the ``inception`` extractor are called FID (the metrics core enforces the naming).
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from ray import serve

from services.common.logging import get_logger

log = get_logger(__name__)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "model_dump"):
        return _jsonable(x.model_dump(mode="json"))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else x
    return x


def flatten_scores(result: dict) -> list[dict]:
    """Pull ``[{name, value, std?, ci_low?, ci_high?}]`` out of a ScoreResult dump, whatever its nesting."""
    out: list[dict] = []
    scores = result.get("scores")
    if isinstance(scores, list):
        for s in scores:
            if isinstance(s, dict) and "name" in s and "value" in s:
                out.append({k: s.get(k) for k in ("name", "metric", "value", "std", "ci_low", "ci_high", "ci_level",
                                                  "extractor") if s.get(k) is not None})
        return out
    if isinstance(scores, dict):
        for name, v in scores.items():
            if isinstance(v, (int, float)):
                out.append({"name": name, "value": float(v)})
            elif isinstance(v, dict) and isinstance(v.get("value"), (int, float)):
                entry = {"name": name, "value": float(v["value"])}
                for k in ("std", "ci_low", "ci_high"):
                    if isinstance(v.get(k), (int, float)):
                        entry[k] = float(v[k])
                ci = v.get("ci")
                if isinstance(ci, (list, tuple)) and len(ci) == 2:
                    entry["ci_low"], entry["ci_high"] = float(ci[0]), float(ci[1])
                out.append(entry)
    return out


class MetricsReplica:
    """Scores batches of a store; one scoring run at a time per replica (feature extraction is heavy)."""

    def __init__(self, store_url: str | None = None, inception_weights: str | None = None, device: str = "auto"):
        from services.common.config import get_settings

        s = get_settings()
        self.store_url = store_url or s.resolved_store_url
        self.inception_weights = inception_weights
        self.device = device
        self._lock = threading.Lock()

    def references(self) -> list[str]:
        from services.metrics.references import list_references

        return list_references()

    def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str = "inception") -> dict:
        from services.metrics import api

        t0 = time.perf_counter()
        weights = self.inception_weights if extractor == "inception" else None
        device = None if self.device == "auto" else self.device
        with self._lock:
            result = api.score(real=reference, synthetic=batch_id, metrics=list(metrics), extractor=extractor,
                               weights=weights, device=device, store_url=self.store_url)
        dumped = _jsonable(result)
        stamp = (dumped.get("stamps") or {}).get(extractor) or ({"name": extractor} if dumped.get("extractor") else {})
        if stamp:
            stamp = {**stamp, "weights_hash": stamp.get("weights_digest") or stamp.get("weights_sha256") or ""}
        return {
            "batch_id": batch_id, "reference": reference, "metrics": dumped.get("metrics", list(metrics)),
            "extractor": stamp, "scores": flatten_scores(dumped),
            "n_real": (dumped.get("real") or {}).get("n"), "n_synthetic": (dumped.get("synthetic") or {}).get("n"),
            "warnings": dumped.get("warnings", []), "seconds": round(time.perf_counter() - t0, 3), "result": dumped,
        }


@serve.deployment(
    name="metrics",
    max_ongoing_requests=8,
    ray_actor_options={"num_cpus": 0.5},
    autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 1},
    health_check_period_s=10,
)
class MetricsDeployment:
    def __init__(self, store_url: str | None = None, inception_weights: str | None = None, device: str = "auto"):
        self.core = MetricsReplica(store_url, inception_weights, device)

    async def references(self) -> list[str]:
        import asyncio

        return await asyncio.to_thread(self.core.references)

    async def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str = "inception") -> dict:
        import asyncio

        return await asyncio.to_thread(self.core.score, batch_id, reference, metrics, extractor)

    async def ready(self) -> bool:
        return True
