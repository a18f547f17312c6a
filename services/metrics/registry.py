"""The measure registry: every metric :func:`services.metrics.api.score` knows, what it needs, its options.

A measure module (``services/metrics/measures/<name>.py``) ends with::

    register_measure(Measure(name="kid", inputs=frozenset({FEATURES}), compute=_compute,
                             options={"kid_subsets": defaults.KID_SUBSETS, ...}, summary="..."))

``score`` loads what the requested measures' ``inputs`` name (features of the requested extractor, spatial
features, per-class mean images), then calls each measure's ``compute`` with a :class:`MeasureInput` in
registry order. ``ALL_METRICS``, :func:`parse_metrics` and :func:`check_request` come from here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from services.metrics import defaults
from services.metrics.errors import MetricsError
from services.metrics.measures import BUILTIN

if TYPE_CHECKING:
    import numpy as np

    from services.metrics.result import Score
    from services.metrics.sets import SetData

# what a measure reads from both loaded sets
FEATURES = "features"  # (n, d) features of the requested extractor
SPATIAL = "spatial"  # (n, 8) per-image spatial features (measures/spatial.py)
MEAN_IMAGES = "mean_images"  # per-class mean images and their counts (measures/variety.py)
INPUTS = frozenset({FEATURES, SPATIAL, MEAN_IMAGES})

# options every measure reads (score() keywords), with their defaults
COMMON_OPTIONS: dict[str, Any] = {"seed": defaults.SEED, "ci_level": defaults.CI_LEVEL, "bootstrap": defaults.BOOTSTRAP}
ALL_METRICS: tuple[str, ...] = BUILTIN  # the built-in measures, in the order they are computed and listed


@dataclass
class MeasureInput:
    """Everything a measure's ``compute`` gets: both loaded sets and the resolved options."""

    real: "SetData"
    synthetic: "SetData"
    extractor: str | None  # the requested extractor when the measure reads FEATURES, else None
    options: dict[str, Any]  # this measure's options (defaults overridden by the caller's)
    seed: int
    ci_level: float
    bootstrap: int  # replicates for CIs (0 = none), resolved by defaults.bootstrap_replicates when not given
    warnings: list[str] = field(default_factory=list)  # appended to ScoreResult.warnings

    @property
    def real_features(self) -> "np.ndarray":
        return self.real.features[self.extractor]

    @property
    def synthetic_features(self) -> "np.ndarray":
        return self.synthetic.features[self.extractor]


@dataclass
class Outcome:
    """What a measure returns: its score entries and, optionally, ScoreResult fields it fills (``details``)."""

    scores: list["Score"] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. {"spatial": rows, "spatial_omitted": {...}}


@dataclass(frozen=True)
class Measure:
    name: str  # as requested (``metrics="fid,kid"``)
    inputs: frozenset[str]  # subset of INPUTS
    compute: Callable[[MeasureInput], Outcome]
    options: Mapping[str, Any] = field(default_factory=dict)  # score() keyword → default (from defaults.py)
    summary: str = ""
    details: tuple[str, ...] = ()  # ScoreResult fields the measure fills besides ``scores``

    @property
    def uses_extractor(self) -> bool:
        """Extractor rule: a measure on FEATURES uses the requested extractor (its stamp is recorded, its scores
        carry the extractor's name and, for fid/kid, are named by :mod:`services.metrics.naming`); the others
        use none."""
        return FEATURES in self.inputs


_MEASURES: dict[str, Measure] = {}
_LOCK = threading.Lock()
_LOADED = False


def register_measure(measure: Measure, replace: bool = False) -> Measure:
    if not measure.inputs or not measure.inputs <= INPUTS:
        raise MetricsError(f"measure {measure.name!r}: inputs must be a non-empty subset of {sorted(INPUTS)}")
    if measure.name == "all":
        raise MetricsError("'all' is not a measure name")
    clash = set(measure.options) & set(COMMON_OPTIONS)
    if clash:
        raise MetricsError(f"measure {measure.name!r}: options {sorted(clash)} are common options")
    with _LOCK:
        if measure.name in _MEASURES and not replace:
            raise MetricsError(f"measure {measure.name!r} already registered")
        _MEASURES[measure.name] = measure
    return measure


def unregister_measure(name: str) -> None:
    with _LOCK:
        _MEASURES.pop(name, None)


def _load_builtins() -> None:
    global _LOADED
    if not _LOADED:
        import importlib

        for name in BUILTIN:
            importlib.import_module(f"services.metrics.measures.{name}")
        _LOADED = True


def metric_names() -> tuple[str, ...]:
    """Registered measures: the built-in ones in ``measures.BUILTIN`` order, then others as registered."""
    _load_builtins()
    with _LOCK:
        names = list(_MEASURES)
    rank = {n: i for i, n in enumerate(ALL_METRICS)}
    return tuple(sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n))))


def get_measure(name: str) -> Measure:
    _load_builtins()
    try:
        return _MEASURES[name]
    except KeyError:
        raise MetricsError(f"unknown metric {name!r}; choose from {', '.join(metric_names())} or 'all'") from None


def measure_options() -> dict[str, Any]:
    """Every option score() accepts as a keyword (common + all measures') → its default."""
    out = dict(COMMON_OPTIONS)
    for name in metric_names():
        out.update(_MEASURES[name].options)
    return out


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    """``"fid,kid"`` / ``["fid", "kid"]`` / ``"all"`` → registered measure names (order kept, duplicates dropped)."""
    known = metric_names()
    items = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    if "all" in items:
        return list(known)
    bad = [m for m in items if m not in known]
    if bad:
        named = ", ".join(repr(m) if len(m) <= 40 else repr(m[:36]) + "…" for m in bad[:5])
        raise MetricsError(f"unknown metric(s) {named}{' …' if len(bad) > 5 else ''}; "
                           f"choose from {', '.join(known)} or 'all'")
    if not items:
        raise MetricsError(f"no metrics requested; choose from {', '.join(known)} or 'all'")
    return list(dict.fromkeys(items))


def check_request(metrics: str | Sequence[str], extractor: str) -> tuple[list[str], str]:
    """``(metrics, extractor)`` as :func:`~services.metrics.api.score` will use them, or :class:`MetricsError`
    naming an unknown metric, an empty metric list or an unknown extractor (with the valid names) — checked
    without loading an extractor, weights or data (only the measure modules are imported), so the serving layer
    refuses a bad scoring request at submission instead of queueing a job that fails."""
    from services.metrics.extractors import available_extractors

    mlist = parse_metrics(metrics)
    name = str(extractor or "").strip()
    known = available_extractors()
    if name not in known:
        shown = repr(name) if len(name) <= 40 else repr(name[:36]) + "…"
        raise MetricsError(f"unknown extractor {shown}; available: {', '.join(known)}")
    return mlist, name
