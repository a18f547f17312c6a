"""Metrics core: score synthetic chest X-rays against real ones. See README.md beside this file.

``from services.metrics import score, BatchId, Folder, MetricsError, register_reference`` — resolved lazily, so
that importing the extractors alone (GPU benchmark) does not load the measures, scikit-learn or the store.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "MetricsError": "services.metrics.errors",
    "score": "services.metrics.api",
    "ScoreResult": "services.metrics.result",
    "Score": "services.metrics.result",
    "ScoreSummary": "services.metrics.summary",
    "BatchId": "services.metrics.inputs",
    "Folder": "services.metrics.inputs",
    "FeatureFile": "services.metrics.inputs",
    "ReferenceSet": "services.metrics.inputs",
    "ReferenceFile": "services.metrics.inputs",
    "register_reference": "services.metrics.references",
    "get_reference": "services.metrics.references",
    "list_references": "services.metrics.references",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
