"""Metrics core: score synthetic chest X-rays against real ones. See README.md beside this file.

``from services.metrics import score, MetricsError, register_reference`` — resolved lazily so that importing
the extractors alone (GPU benchmark box) needs only torch/numpy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MetricsError", "ScoreResult", "get_reference", "list_references", "register_reference", "score"]


def __getattr__(name: str) -> Any:
    if name == "MetricsError":
        from services.metrics.errors import MetricsError

        return MetricsError
    if name in ("score", "ScoreResult"):
        from services.metrics import api

        return getattr(api, name)
    if name in ("register_reference", "get_reference", "list_references"):
        from services.metrics import references

        return getattr(references, name)
    raise AttributeError(name)
