"""The evaluation registry: every kind :func:`services.metrics.evaluation.api.evaluate` runs.

An evaluation module (``services/metrics/evaluation/<kind>.py``) defines a pydantic ``Options`` model (its
fields are the CLI flags, the REST/gRPC ``options`` and the defaults, in one place) and ends with::

    register_evaluation(Evaluation(kind="utility", options=UtilityOptions, run=run, summary="...",
                                   needs_data=True))

``run(synthetic: SyntheticSet, options, progress) -> EvaluationResult``. ``needs_data``: the kind reads a
labelled real dataset (``options.data``: a :class:`~services.metrics.evaluation.inputs.DataSpec`).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel

from services.metrics.errors import MetricsError

#: built-in kinds, in the order they are listed (module name = kind with "-" → "_")
BUILTIN = ("conditioning", "utility", "memorisation", "bias", "per-finding")


@dataclass(frozen=True)
class Evaluation:
    kind: str
    options: type[BaseModel]
    run: Callable  # (SyntheticSet, options, ProgressFn) -> EvaluationResult
    summary: str
    needs_data: bool = False


_KINDS: dict[str, Evaluation] = {}
_LOCK = threading.Lock()


def register_evaluation(ev: Evaluation, replace: bool = False) -> Evaluation:
    with _LOCK:
        if ev.kind in _KINDS and not replace:
            raise MetricsError(f"evaluation {ev.kind!r} already registered")
        _KINDS[ev.kind] = ev
    return ev


def _load(kind: str) -> None:
    if kind in BUILTIN and kind not in _KINDS:
        importlib.import_module(f"services.metrics.evaluation.{kind.replace('-', '_')}")


def evaluation_kinds() -> tuple[str, ...]:
    for k in BUILTIN:
        _load(k)
    with _LOCK:
        names = list(_KINDS)
    rank = {k: i for i, k in enumerate(BUILTIN)}
    return tuple(sorted(names, key=lambda k: (rank.get(k, len(rank)), names.index(k))))


def get_evaluation(kind: str) -> Evaluation:
    name = str(kind or "").strip().lower().replace("_", "-")
    _load(name)
    try:
        return _KINDS[name]
    except KeyError:
        shown = repr(name) if len(name) <= 40 else repr(name[:36]) + "…"
        raise MetricsError(f"unknown evaluation {shown}; choose from {', '.join(evaluation_kinds())}") from None


def parse_options(kind: str, options: dict | BaseModel | None) -> BaseModel:
    """Options of ``kind`` validated (a :class:`MetricsError` naming the bad field otherwise)."""
    from pydantic import ValidationError

    ev = get_evaluation(kind)
    if isinstance(options, ev.options):
        return options
    raw = options.model_dump() if isinstance(options, BaseModel) else dict(options or {})
    try:
        return ev.options.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "options"
        raise MetricsError(f"{kind} option {where}: {err.get('msg', 'invalid')}") from None
