"""The scoring service's core, without Ray: score a stored batch against a registered reference.

:class:`MetricsReplica` is what the Serve deployment (``deployment.py``) wraps and what the gateway's
in-process client (``services.gateway.clients.LocalScorer``) calls directly. The batch is read through the
batch store (streaming, verified, features cached by content hash by the metrics core); the result is a
:class:`~services.metrics.summary.ScoreSummary`. Only scores made with the ``inception`` extractor are called
FID (``services/metrics/naming.py``).
"""

from __future__ import annotations

import threading
import time

from services.metrics import defaults
from services.metrics.summary import ScoreSummary


class MetricsReplica:
    """Scores batches of a store; one scoring run at a time per replica (feature extraction is heavy)."""

    def __init__(self, store_url: str | None = None, inception_weights: str | None = None, device: str | None = "auto",
                 cache_url: str | None = None):
        from services.common.config import get_settings

        self.store_url = store_url or get_settings().resolved_store_url
        self.inception_weights = inception_weights
        self.device = None if device in (None, "auto") else device  # None: get_settings().resolved_device()
        # the feature cache and the user references: a folder or an object-store URL every replica shares
        self.cache_url = cache_url or get_settings().resolved_metrics_cache_url
        self._cache = None
        self._lock = threading.Lock()

    @property
    def cache(self):
        """The replica's :class:`~services.metrics.cache.FeatureCache` (at ``cache_url``)."""
        if self._cache is None:
            from services.metrics.cache import FeatureCache

            self._cache = FeatureCache(self.cache_url)
        return self._cache

    def references(self) -> list[str]:
        from services.metrics.references import list_references

        return list_references(self.cache)

    def score_summary(self, batch_id: str, reference: str, metrics: list[str],
                      extractor: str = defaults.EXTRACTOR) -> ScoreSummary:
        from services.metrics import api
        from services.metrics.inputs import BatchId, ReferenceSet

        t0 = time.perf_counter()
        weights = self.inception_weights if extractor == defaults.EXTRACTOR else None
        with self._lock:
            result = api.score(ReferenceSet(reference), BatchId(batch_id, self.store_url), list(metrics), extractor,
                               weights=weights, device=self.device, cache=self.cache)
        return ScoreSummary.from_result(result, batch_id, reference, time.perf_counter() - t0)

    def evaluate(self, kind: str, batch_ids: list[str], options: dict, progress=None) -> dict:
        """Run evaluation ``kind`` (``services.metrics.evaluation``) on stored batches of one model (one set);
        ``options`` are the kind's
        options, already resolved by the serving layer (a ``data`` field names a server-side dataset, never a
        path from a client). Returns the :class:`EvaluationResult` as JSON; ``progress(done, total, stage)``."""
        from services.metrics.cache import cache_url_scope
        from services.metrics.evaluation import evaluate

        with self._lock, cache_url_scope(self.cache_url):
            result = evaluate(kind, list(batch_ids), options, progress, store_url=self.store_url)
        return result.model_dump(mode="json")

    def score(self, batch_id: str, reference: str, metrics: list[str], extractor: str = defaults.EXTRACTOR) -> dict:
        """:meth:`score_summary` as the JSON-able dict the gateway stores as the job's result."""
        return self.score_summary(batch_id, reference, metrics, extractor).model_dump(mode="json")
