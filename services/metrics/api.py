"""``score(real, synthetic, metrics, extractor=…)`` — the pure function the CLI and the serving layer call.

real:      a folder of images, a registered reference name (default ``nih-cxr64``, shipped), a reference
           ``.npz``, or a ``.npy`` feature file (n × d).
synthetic: a folder of images, a stored batch's folder (one holding ``manifest.json``, any batch format —
           read through ``BatchStore(parent).iter_images``), a batch id in the BatchStore at
           ``get_settings().resolved_store_url``, or a ``.npy`` feature file. Both may also be an
           :class:`~services.metrics.sources.ImageSource`. Every image to be read is decoded and checked
           (both sets) before any feature extraction starts, so a corrupt file fails at once, named.
metrics:   any of ``fid`` (Fréchet distance; named FID only for the ``inception`` extractor, else
           ``FD_<extractor>``), ``kid``, ``ipr`` (improved precision/recall, k=3), ``prdc`` (density/coverage,
           k=5), ``spatial`` (interpretable features, real-vs-synthetic table), ``svm`` (separability F1),
           ``variety`` (PNG size of per-class mean images). ``all`` = every one.

Errors are :class:`MetricsError` (a ``ValueError``) with a message meant for the user.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, Field, PrivateAttr

from services.metrics.cache import FeatureCache
from services.metrics.errors import MetricsError
from services.metrics.extractors import get_extractor, score_name
from services.metrics.sets import SetData, features_set, load_set, needs_read, preread
from services.metrics.sources import ArraySource, BatchSource, FolderSource, ImageSource, load_feature_file

ALL_METRICS = ("fid", "kid", "ipr", "prdc", "spatial", "svm", "variety")
FEATURE_METRICS = {"fid", "kid", "ipr", "prdc"}
IMAGE_METRICS = {"spatial", "svm", "variety"}
VERSION = "synthrad-metrics/1"

Progress = Callable[[str, int, "int | None"], None]


class SetInfo(BaseModel):
    description: str
    kind: str
    n: int
    content_hash: str | None = None
    image_shape: list[int] | None = None
    classes: dict[str, int] | None = None
    computed_images: int = Field(0, description="images pushed through an extractor in this call (0 = cached/reference)")


class Score(BaseModel):
    metric: str = Field(description="fid | kid | ipr | prdc | svm | variety")
    name: str = Field(description="display name: FID only for the inception extractor (else FD_<extractor>)")
    value: float
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    extractor: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class ScoreResult(BaseModel):
    version: str = VERSION
    created: str
    real: SetInfo
    synthetic: SetInfo
    metrics: list[str]
    extractor: str | None
    stamps: dict[str, dict[str, Any]] = Field(default_factory=dict, description="extractor stamps by name")
    scores: list[Score] = Field(default_factory=list)
    spatial: list[dict[str, Any]] | None = None
    spatial_omitted: dict[str, str] | None = Field(
        None, description="spatial features left out of the comparison (undefined for these sets) → reason")
    separability: dict[str, Any] | None = None
    variety: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)

    _real: SetData | None = PrivateAttr(default=None)
    _synthetic: SetData | None = PrivateAttr(default=None)

    def get(self, name: str) -> Score:
        for s in self.scores:
            if s.name == name or s.metric == name:
                return s
        raise KeyError(name)

    def values(self) -> dict[str, float]:
        return {s.name: s.value for s in self.scores}

    def to_json(self, **kw: Any) -> str:
        return self.model_dump_json(indent=kw.pop("indent", 2), **kw)


def parse_metrics(metrics: str | Sequence[str]) -> list[str]:
    items = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    if "all" in items:
        return list(ALL_METRICS)
    bad = [m for m in items if m not in ALL_METRICS]
    if bad:
        named = ", ".join(repr(m) if len(m) <= 40 else repr(m[:36]) + "…" for m in bad[:5])
        raise MetricsError(f"unknown metric(s) {named}{' …' if len(bad) > 5 else ''}; "
                           f"choose from {', '.join(ALL_METRICS)} or 'all'")
    if not items:
        raise MetricsError(f"no metrics requested; choose from {', '.join(ALL_METRICS)} or 'all'")
    return list(dict.fromkeys(items))


def check_request(metrics: str | Sequence[str], extractor: str) -> tuple[list[str], str]:
    """``(metrics, extractor)`` as :func:`score` will use them, or :class:`MetricsError` naming an unknown metric,
    an empty metric list or an unknown extractor (with the valid names) — checked without loading anything, so
    the serving layer refuses a bad scoring request at submission instead of queueing a job that fails."""
    from services.metrics.extractors import available_extractors

    mlist = parse_metrics(metrics)
    name = str(extractor or "").strip()
    known = available_extractors()
    if name not in known:
        shown = repr(name) if len(name) <= 40 else repr(name[:36]) + "…"
        raise MetricsError(f"unknown extractor {shown}; available: {', '.join(known)}")
    return mlist, name


def _resolve(spec: Any, side: str, store_url: str | None, cache: FeatureCache):
    """→ ('source', ImageSource) | ('features', SetData) | ('reference', Reference)."""
    from services.metrics import references

    if isinstance(spec, ImageSource):
        return "source", spec
    if isinstance(spec, np.ndarray):
        if spec.ndim == 2:  # (n, d) features; image stacks are (n, H, W) or (n, H, W, 3)
            return "features", spec
        return "source", ArraySource(list(spec), name=f"{side} arrays")
    s = str(spec)
    p = Path(s).expanduser()
    if s.lower().endswith(".npy"):
        if not p.is_file():
            raise MetricsError(f"{side} feature file {s} not found")
        return "features", load_feature_file(p)
    if p.is_dir():
        if (p / "manifest.json").is_file():  # a stored batch (e.g. the folder `synthrad generate` prints)
            return "source", BatchSource.from_folder(p)
        return "source", FolderSource(p)
    if p.is_file() and p.suffix.lower() == ".npz":
        return "reference", references.load_reference_file(p)
    if p.exists():
        raise MetricsError(f"{side} set {s}: expected a folder of images, a .npy feature file or a reference .npz")
    if side == "real" and references.is_reference(s, cache):
        return "reference", references.get_reference(s, cache)
    if side == "synthetic":
        try:
            return "source", BatchSource(s, store_url)
        except ImportError:
            pass
        except Exception as e:  # BatchNotFound / InvalidBatchId from the store
            if type(e).__name__ not in ("BatchNotFound", "InvalidBatchId", "FileNotFoundError", "KeyError"):
                raise MetricsError(f"cannot open batch {s!r}: {e}") from e
        raise MetricsError(f"synthetic set {s!r} not found: no such folder or .npy file, and no stored batch with that id")
    known = ", ".join(references.list_references(cache)) or "none"
    raise MetricsError(f"real set {s!r} not found: no such folder or file, and no registered reference by that name (known: {known})")


def undefined_spatial_rows(real: np.ndarray, synthetic: np.ndarray, names: Sequence[str]) -> dict[str, str]:
    """Spatial features with no meaning for these two sets → reason (left out of tables and reports).

    * ``colourfulness`` when both sets are greyscale (it is 0 for every greyscale image: a constant row, p = 1).
    * any feature that is one identical constant in both sets (no distribution to compare)."""
    out: dict[str, str] = {}
    for j, name in enumerate(names):
        a, b = np.asarray(real)[:, j], np.asarray(synthetic)[:, j]
        if not (len(a) and len(b)):
            continue
        if name == "colourfulness" and not a.any() and not b.any():
            out[name] = "both sets are greyscale (colourfulness is 0 for greyscale images)"
        elif np.all(a == a[0]) and np.all(b == a[0]):
            out[name] = f"constant {float(a[0]):.4g} in both sets"
    return out


def score(
    real: Any,
    synthetic: Any,
    metrics: str | Sequence[str] = ("fid",),
    extractor: str = "inception",
    *,
    weights: str | None = None,
    weights_sha256: str | None = None,
    device: str | None = None,
    dtype: str = "float32",
    batch_size: int | None = None,
    bootstrap: int | None = None,
    ci_level: float = 0.95,
    k_ipr: int = 3,
    k_prdc: int = 5,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    store_url: str | None = None,
    cache: FeatureCache | bool = True,
    progress: Progress | None = None,
) -> ScoreResult:
    """Score ``synthetic`` against ``real``. See the module docstring. Returns a JSON-able :class:`ScoreResult`."""
    from services.metrics import references
    from services.metrics.measures import fid as fidm
    from services.metrics.measures.kid import choose_subset_size
    from services.metrics.measures.kid import kid as kid_fn
    from services.metrics.measures.prdc import bootstrap_precision_recall, density_coverage, improved_precision_recall
    from services.metrics.measures.separability import svm_separability
    from services.metrics.measures.spatial import SPATIAL_FEATURES, compare_spatial
    from services.metrics.measures.variety import variety as variety_fn

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    mlist = parse_metrics(metrics)
    fcache = cache if isinstance(cache, FeatureCache) else FeatureCache(enabled=bool(cache))
    need_feats = bool(FEATURE_METRICS & set(mlist))
    need_images = bool(IMAGE_METRICS & set(mlist))
    warn: list[str] = []
    if device is None:
        try:
            from services.common.config import get_settings

            device = get_settings().resolved_device()
        except Exception:  # noqa: BLE001
            device = "cpu"

    kind_r, obj_r = _resolve(real, "real", store_url, fcache)
    kind_s, obj_s = _resolve(synthetic, "synthetic", store_url, fcache)
    timings["resolve"] = time.perf_counter() - t_start

    ex = None

    def extractor_obj():
        nonlocal ex
        if ex is None:
            opts: dict[str, Any] = {"device": device}
            if extractor == "inception":
                opts.update(weights=weights, expected_sha256=weights_sha256, dtype=dtype)
            elif weights:
                opts["weights"] = weights
            t = time.perf_counter()
            ex = get_extractor(extractor, **opts)
            timings["load_extractor"] = time.perf_counter() - t
        return ex

    # decode and check every image to be read (both sets) before any extractor runs: a corrupt file fails
    # at once, named, instead of after minutes of feature extraction
    t = time.perf_counter()
    items: dict[str, list | None] = {}
    for side, kind, obj in (("real", kind_r, obj_r), ("synthetic", kind_s, obj_s)):
        if kind == "source":
            exs = [extractor_obj()] if need_feats else []
            if needs_read(obj, exs, spatial=need_images, variety="variety" in mlist, cache=fcache):
                items[side] = preread(obj, progress, side)
    timings["read_check"] = time.perf_counter() - t

    def load(kind: str, obj: Any, side: str) -> SetData:
        if kind == "features":
            if need_images:
                raise MetricsError(
                    f"{', '.join(sorted(IMAGE_METRICS & set(mlist)))} need images, but the {side} set is a feature file"
                )
            return features_set(obj, f"{side} features ({obj.shape[0]}×{obj.shape[1]})", extractor)
        if kind == "reference":
            ref = obj
            ref.data.extractor_calls = 0  # count only what this call computes
            if need_feats:
                references.ensure_extractor(ref, extractor_obj(), fcache, progress)
            if need_images and ref.data.spatial is None:
                raise MetricsError(f"reference {ref.name!r} has no spatial features / mean images (built from features only)")
            return ref.data
        exs = [extractor_obj()] if need_feats else []
        return load_set(obj, exs, spatial=need_images, variety="variety" in mlist, cache=fcache, progress=progress,
                        batch_size=batch_size, label=side, items=items.get(side), checked=side in items)

    t = time.perf_counter()
    rd = load(kind_r, obj_r, "real")
    timings["real_set"] = time.perf_counter() - t
    t = time.perf_counter()
    sd = load(kind_s, obj_s, "synthetic")
    timings["synthetic_set"] = time.perf_counter() - t

    result_scores: list = []
    stamps: dict[str, dict] = {}
    fr = fs = None
    if need_feats:
        if extractor not in rd.features or extractor not in sd.features:
            raise MetricsError(f"no {extractor} features for one of the sets")
        fr, fs = rd.features[extractor], sd.features[extractor]
        if fr.shape[1] != fs.shape[1]:
            raise MetricsError(
                f"feature dimensions differ: real {fr.shape[1]} vs synthetic {fs.shape[1]} "
                f"(were both made with the {extractor} extractor?)"
            )
        st = sd.stamps.get(extractor) or rd.stamps.get(extractor)
        if st is not None:
            stamps[extractor] = st.to_dict()
        r_st, s_st = rd.stamps.get(extractor), sd.stamps.get(extractor)
        if r_st is not None and s_st is not None and r_st.weights_digest and s_st.weights_digest and r_st.key() != s_st.key():
            if not r_st.compatible(s_st):
                raise MetricsError(
                    f"the real and synthetic features were made with different {extractor} extractors "
                    f"(stamp {r_st.key()} vs {s_st.key()}: weights or preprocessing differ); refusing to mix"
                )
            warn.append(f"real features computed in {r_st.dtype}, synthetic in {s_st.dtype}: expect small differences")
            stamps[f"{extractor}:real"] = r_st.to_dict()
    common = {"extractor": extractor}
    level = ci_level

    if bootstrap is None and need_feats:
        # a replicate costs an n×n eigen-solve when min(n) < dims, a dims×dims one otherwise (~seconds at 2048-d)
        bootstrap = 100 if min(len(fr), len(fs)) < fr.shape[1] else 20
    bootstrap = bootstrap or 0
    if "fid" in mlist:
        t = time.perf_counter()
        dims = fr.shape[1]
        warn += fidm.check_sizes(len(fr), len(fs), dims, score_name(extractor))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fidm.SampleSizeWarning)
            if min(len(fr), len(fs)) < dims:
                val = fidm.frechet_distance_features(fr, fs, warn=False)
            else:
                r_st, s_st = rd.stats[extractor], sd.stats[extractor]
                val = fidm.frechet_distance(r_st.mean, r_st.cov, s_st.mean, s_st.cov)
        val = max(val, 0.0)  # a distance: only round-off makes it negative (identical sets)
        sc = {"metric": "fid", "name": score_name(extractor), "value": val, **common,
              "params": {"n_real": len(fr), "n_synthetic": len(fs), "dims": dims}}
        if bootstrap > 0:
            lo, hi, _ = fidm.bootstrap_fd(fr, fs, n_boot=bootstrap, seed=seed, level=level, point=val)
            sc.update(ci_low=lo, ci_high=hi, ci_level=level)
            sc["params"]["bootstrap"] = bootstrap
        result_scores.append(Score(**sc))
        timings["fid"] = time.perf_counter() - t
    if "kid" in mlist:
        t = time.perf_counter()
        # a subset as large as the smaller set is that set every time (std 0): lowered, with a warning
        m, kid_msg = choose_subset_size(len(fs), len(fr), kid_subset_size)
        if kid_msg:
            warn.append(kid_msg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mean, std = kid_fn(fs, fr, subsets=kid_subsets, subset_size=m, seed=seed)
        name = "KID" if extractor == "inception" else f"KID_{extractor}"
        if m < 100:
            warn.append(f"KID subsets of {m} images are small; the std ({std:.2g}) shows how noisy it is")
        result_scores.append(Score(metric="kid", name=name, value=mean, std=std, **common,
                                   params={"subsets": kid_subsets, "subset_size": m, "kernel": "(x·y/d + 1)^3"}))
        timings["kid"] = time.perf_counter() - t
    if "ipr" in mlist:
        t = time.perf_counter()
        p, r = improved_precision_recall(fr, fs, k=k_ipr)
        ci = (bootstrap_precision_recall(fr, fs, k=k_ipr, n_boot=bootstrap, seed=seed, level=level, point=(p, r))
              if bootstrap > 0 else None)
        for nm, v in (("precision", p), ("recall", r)):
            extra = {"ci_low": ci[nm][0], "ci_high": ci[nm][1], "ci_level": level} if ci else {}
            result_scores.append(Score(metric="ipr", name=nm, value=v, **common, **extra,
                                       params={"k": k_ipr, "definition": "Kynkäänniemi et al. 2019"}))
        timings["ipr"] = time.perf_counter() - t
    if "prdc" in mlist:
        t = time.perf_counter()
        dens, cov = density_coverage(fr, fs, k=k_prdc)
        for nm, v in (("density", dens), ("coverage", cov)):
            result_scores.append(Score(metric="prdc", name=nm, value=v, **common,
                                       params={"k": k_prdc, "definition": "Naeem et al. 2020"}))
        timings["prdc"] = time.perf_counter() - t

    spatial_rows = separability = variety_out = None
    spatial_omitted: dict[str, str] = {}
    if need_images:
        if rd.image_shape and sd.image_shape and tuple(rd.image_shape) != tuple(sd.image_shape):
            warn.append(
                f"image sizes differ (real {tuple(rd.image_shape)}, synthetic {tuple(sd.image_shape)}): sharpness, GLCM "
                "and variety values depend on resolution"
            )
    if "spatial" in mlist:
        t = time.perf_counter()
        spatial_rows = compare_spatial(rd.spatial, sd.spatial, SPATIAL_FEATURES)
        spatial_omitted = undefined_spatial_rows(rd.spatial, sd.spatial, SPATIAL_FEATURES)
        spatial_rows = [row for row in spatial_rows if row["feature"] not in spatial_omitted]
        timings["spatial"] = time.perf_counter() - t
    if "svm" in mlist:
        t = time.perf_counter()
        separability = svm_separability(rd.spatial, sd.spatial, seed=seed)
        for kern in ("linear", "rbf"):
            result_scores.append(Score(metric="svm", name=f"svm_f1_{kern}", value=separability[kern]["f1"],
                                       params={"features": "spatial", **separability[kern]["best_params"]}))
        timings["svm"] = time.perf_counter() - t
    if "variety" in mlist:
        t = time.perf_counter()
        variety_out = {"real": variety_fn(rd.means, rd.mean_counts), "synthetic": variety_fn(sd.means, sd.mean_counts),
                       "note": "PNG bytes of the per-class mean image: smaller = more varied set"}
        for side in ("real", "synthetic"):
            if "all" in variety_out[side]:
                result_scores.append(Score(metric="variety", name=f"variety_png_bytes_{side}",
                                           value=float(variety_out[side]["all"]["png_bytes"]), params={"class": "all"}))
        timings["variety"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - t_start

    def info(d: SetData) -> SetInfo:
        s = d.summary()
        return SetInfo(description=s["description"], kind=s["kind"], n=s["n"], content_hash=s["content_hash"],
                       image_shape=s["image_shape"], classes=s["classes"], computed_images=d.extractor_calls)

    res = ScoreResult(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        real=info(rd),
        synthetic=info(sd),
        metrics=mlist,
        extractor=extractor if need_feats else None,
        stamps=stamps,
        scores=result_scores,
        spatial=spatial_rows,
        spatial_omitted=spatial_omitted or None,
        separability=separability,
        variety=variety_out,
        warnings=list(dict.fromkeys(warn)),
        timings_s={k: round(v, 4) for k, v in timings.items()},
    )
    res._real, res._synthetic = rd, sd
    return res


__all__ = ["ALL_METRICS", "MetricsError", "Score", "ScoreResult", "SetInfo", "check_request", "parse_metrics", "score",
           "undefined_spatial_rows"]
