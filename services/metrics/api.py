"""``score(real, synthetic, metrics, extractor=…, **options)`` — the pure function the CLI and the serving layer call.

real, synthetic: typed inputs (:mod:`services.metrics.inputs`: ``BatchId``, ``Folder`` — a folder of images or a
           stored batch's folder —, ``FeatureFile``, ``ReferenceSet``, ``ReferenceFile``), an
           :class:`~services.metrics.sources.ImageSource`, a numpy array (2-D features or a stack of images),
           or a string / path read by :func:`services.metrics.inputs.parse_input` (its docstring gives the
           precedence). Every image to be read is decoded and checked (both sets) before any feature
           extraction starts, so a corrupt file fails at once, named.
metrics:   names registered in :mod:`services.metrics.registry` (built in: ``fid`` — named FID only for the
           ``inception`` extractor, else ``FD_<extractor>`` —, ``kid``, ``ipr``, ``prdc``, ``spatial``, ``svm``,
           ``variety``; one module each under ``measures/``); ``all`` = every one.
options:   ``seed``, ``ci_level``, ``bootstrap`` (replicates for CIs; default by set size) and the measures' own
           (``k_ipr``, ``k_prdc``, ``kid_subsets``, ``kid_subset_size``, ``svm_train_fraction``); defaults in
           :mod:`services.metrics.defaults`.

Errors are :class:`MetricsError` (a ``ValueError``) with a message meant for the user.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from services.metrics import defaults
from services.metrics.cache import FeatureCache
from services.metrics.errors import MetricsError
from services.metrics.extractors import get_extractor
from services.metrics.registry import (
    ALL_METRICS,
    FEATURES,
    MEAN_IMAGES,
    SPATIAL,
    Measure,
    MeasureInput,
    check_request,
    get_measure,
    measure_options,
    metric_names,
    parse_metrics,
)
from services.metrics.result import Score, ScoreResult, SetInfo
from services.metrics.sets import SetData, features_set, load_set, needs_read, preread

Progress = Callable[[str, int, "int | None"], None]


def _options(given: dict[str, Any]) -> dict[str, Any]:
    known = measure_options()
    bad = sorted(set(given) - set(known))
    if bad:
        raise TypeError(f"score() got unexpected keyword argument(s) {', '.join(bad)}; options: {', '.join(sorted(known))}")
    return {**known, **given}


class _Loader:
    """Opens both sets and loads what the requested measures read, through the feature cache."""

    def __init__(self, measures: list[Measure], extractor: str, extractor_options: dict[str, Any],
                 cache: FeatureCache, progress: Progress | None, batch_size: int | None, timings: dict[str, float]):
        needs = frozenset().union(*(m.inputs for m in measures))
        self.need_feats = FEATURES in needs
        self.need_images = bool(needs & {SPATIAL, MEAN_IMAGES})
        self.need_means = MEAN_IMAGES in needs
        self.image_measures = [m.name for m in measures if m.inputs - {FEATURES}]
        self.extractor, self.extractor_options = extractor, extractor_options
        self.cache, self.progress, self.batch_size, self.timings = cache, progress, batch_size, timings
        self._ex = None

    def extractor_obj(self):
        if self._ex is None:
            opts = dict(self.extractor_options)
            if opts.get("device") is None:
                from services.common.config import get_settings

                try:
                    opts["device"] = get_settings().resolved_device()
                except ValueError as e:
                    raise MetricsError(str(e)) from None
            t = time.perf_counter()
            self._ex = get_extractor(self.extractor, **opts)
            self.timings["load_extractor"] = time.perf_counter() - t
        return self._ex

    def extractors(self) -> list:
        return [self.extractor_obj()] if self.need_feats else []

    def preread(self, opened: dict[str, tuple[str, Any]]) -> dict[str, list | None]:
        """Decode and check every image to be read (both sets) before any extractor runs: a corrupt file fails at
        once, named, instead of after minutes of feature extraction."""
        items: dict[str, list | None] = {}
        for side, (kind, obj) in opened.items():
            if kind == "source" and needs_read(obj, self.extractors(), spatial=self.need_images,
                                               variety=self.need_means, cache=self.cache):
                items[side] = preread(obj, self.progress, side)
        return items

    def load(self, side: str, kind: str, obj: Any, items: dict[str, list | None]) -> SetData:
        from services.metrics import references

        if kind == "features":
            if self.need_images:
                raise MetricsError(f"{', '.join(sorted(self.image_measures))} need images, but the {side} set is a "
                                   "feature file")
            return features_set(obj, f"{side} features ({obj.shape[0]}×{obj.shape[1]})", self.extractor)
        if kind == "reference":
            obj.data.extractor_calls = 0  # count only what this call computes
            if self.need_feats:
                references.ensure_extractor(obj, self.extractor_obj(), self.cache, self.progress)
            if self.need_images and obj.data.spatial is None:
                raise MetricsError(f"reference {obj.name!r} has no spatial features / mean images (built from features only)")
            return obj.data
        return load_set(obj, self.extractors(), spatial=self.need_images, variety=self.need_means, cache=self.cache,
                        progress=self.progress, batch_size=self.batch_size, label=side, items=items.get(side),
                        checked=side in items)


def _check_features(rd: SetData, sd: SetData, extractor: str, warn: list[str]) -> dict[str, dict]:
    """Both sets have features of ``extractor`` made by compatible stamps → the stamps to report."""
    if extractor not in rd.features or extractor not in sd.features:
        raise MetricsError(f"no {extractor} features for one of the sets")
    fr, fs = rd.features[extractor], sd.features[extractor]
    if fr.shape[1] != fs.shape[1]:
        raise MetricsError(f"feature dimensions differ: real {fr.shape[1]} vs synthetic {fs.shape[1]} "
                           f"(were both made with the {extractor} extractor?)")
    stamps: dict[str, dict] = {}
    st = sd.stamps.get(extractor) or rd.stamps.get(extractor)
    if st is not None:
        stamps[extractor] = st.to_dict()
    r_st, s_st = rd.stamps.get(extractor), sd.stamps.get(extractor)
    if r_st is not None and s_st is not None and r_st.weights_sha256 and s_st.weights_sha256 and r_st.key() != s_st.key():
        if not r_st.compatible(s_st):
            raise MetricsError(f"the real and synthetic features were made with different {extractor} extractors "
                               f"(stamp {r_st.key()} vs {s_st.key()}: weights or preprocessing differ); refusing to mix")
        warn.append(f"real features computed in {r_st.dtype}, synthetic in {s_st.dtype}: expect small differences")
        stamps[f"{extractor}:real"] = r_st.to_dict()
    return stamps


def _info(d: SetData) -> SetInfo:
    s = d.summary()
    return SetInfo(description=s["description"], kind=s["kind"], n=s["n"], content_hash=s["content_hash"],
                   image_shape=s["image_shape"], classes=s["classes"], computed_images=d.extractor_calls)


def score(
    real: Any,
    synthetic: Any,
    metrics: str | Sequence[str] = defaults.METRICS,
    extractor: str = defaults.EXTRACTOR,
    *,
    weights: str | None = None,
    weights_sha256: str | None = None,
    device: str | None = None,
    dtype: str = defaults.DTYPE,
    batch_size: int | None = None,
    store_url: str | None = None,
    cache: FeatureCache | bool = True,
    progress: Progress | None = None,
    **options: Any,
) -> ScoreResult:
    """Score ``synthetic`` against ``real``. See the module docstring. Returns a JSON-able :class:`ScoreResult`.

    ``weights`` / ``weights_sha256`` / ``dtype``: the extractor's weights file, a trusted sha256 of that file,
    its compute dtype (inception); ``device``: default ``get_settings().resolved_device()``; ``store_url``: the
    BatchStore of batch ids given without one; ``cache``: a FeatureCache, or False for none."""
    from services.metrics.inputs import open_input

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    mlist = parse_metrics(metrics)
    opts = _options(options)
    measures = [get_measure(n) for n in metric_names() if n in mlist]
    fcache = cache if isinstance(cache, FeatureCache) else FeatureCache(enabled=bool(cache))
    ex_opts: dict[str, Any] = {"device": device}
    if extractor == defaults.EXTRACTOR:
        ex_opts.update(weights=weights, expected_sha256=weights_sha256, dtype=dtype)
    elif weights:
        ex_opts["weights"] = weights
    loader = _Loader(measures, extractor, ex_opts, fcache, progress, batch_size, timings)
    warn: list[str] = []

    opened = {"real": open_input(real, "real", store_url, fcache),
              "synthetic": open_input(synthetic, "synthetic", store_url, fcache)}
    timings["resolve"] = time.perf_counter() - t_start
    t = time.perf_counter()
    items = loader.preread(opened)
    timings["read_check"] = time.perf_counter() - t
    sets: dict[str, SetData] = {}
    for side, (kind, obj) in opened.items():
        t = time.perf_counter()
        sets[side] = loader.load(side, kind, obj, items)
        timings[f"{side}_set"] = time.perf_counter() - t
    rd, sd = sets["real"], sets["synthetic"]

    stamps: dict[str, dict] = {}
    bootstrap = opts["bootstrap"] or 0
    if loader.need_feats:
        stamps = _check_features(rd, sd, extractor, warn)
        if opts["bootstrap"] is None:
            fr = rd.features[extractor]
            bootstrap = defaults.bootstrap_replicates(len(fr), len(sd.features[extractor]), fr.shape[1])
    size_note = None
    if loader.need_images and rd.image_shape and sd.image_shape and tuple(rd.image_shape) != tuple(sd.image_shape):
        size_note = (f"image sizes differ (real {tuple(rd.image_shape)}, synthetic {tuple(sd.image_shape)}): "
                     "sharpness, GLCM and variety values depend on resolution")

    scores: list[Score] = []
    details: dict[str, Any] = {}
    for m in measures:
        if size_note and not m.uses_extractor:
            warn.append(size_note)
            size_note = None
        t = time.perf_counter()
        inp = MeasureInput(real=rd, synthetic=sd, extractor=extractor if m.uses_extractor else None,
                           options={k: opts[k] for k in m.options}, seed=opts["seed"], ci_level=opts["ci_level"],
                           bootstrap=bootstrap, warnings=warn)
        out = m.compute(inp)
        stray = set(out.details) - set(m.details)
        if stray:
            raise RuntimeError(f"measure {m.name!r} returned undeclared details {sorted(stray)}")
        scores += out.scores
        details.update(out.details)
        timings[m.name] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    res = ScoreResult(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        real=_info(rd),
        synthetic=_info(sd),
        metrics=mlist,
        extractor=extractor if loader.need_feats else None,
        stamps=stamps,
        scores=scores,
        warnings=list(dict.fromkeys(warn)),
        timings_s={k: round(v, 4) for k, v in timings.items()},
        **details,
    )
    res._real, res._synthetic = rd, sd
    return res


__all__ = ["ALL_METRICS", "MetricsError", "Score", "ScoreResult", "SetInfo", "check_request", "parse_metrics", "score"]
