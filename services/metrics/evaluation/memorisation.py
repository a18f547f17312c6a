"""``memorisation``: does the batch copy the generator's training set?

Per feature space (``pixel``: a fixed random projection of the 64×64 image; ``inception``; ``cxr-encoder``), against
a training-set index (:mod:`services.metrics.evaluation.indexes`: the training features and the held-out
calibration, no images):

* **near copies** — each synthetic image's Euclidean distance to its nearest training image, flagged when it is at
  most the threshold ``t_q``: the ``quantile`` q of the real held-out images' distances to the training set
  (q = 0.01: flagged when nearer to a training image than 99 % of real unseen images are). Real held-out images
  are flagged at rate ≈ q by construction; the fraction flagged has a Wilson CI. ``memorised`` is true when, in
  some space, the CI's lower bound exceeds q (more near copies than unseen real images give).
* **authenticity** (Alaa et al. 2022, "How faithful is your synthetic data?", §3.3): synthetic sample y with
  nearest training point x* is *unauthentic* when d(y, x*) < d(x*, x*'s nearest other training point);
  authenticity = fraction authentic, with the held-out real images' value as the baseline. (The definition of
  the paper, per synthetic sample; the public code's line ``real_to_real[real_to_synth_args] < real_to_synth``
  iterates over real points instead, so its numbers differ.)
* **C_T** (Meehan, Chaudhuri & Dasgupta 2020, "A non-parametric test to detect data-copying in generative
  models"; as their reference code): k-means cells of the training set; in each cell the distances of the
  generated (Q) and held-out (P) points to the nearest training point *of that cell* are compared by a
  Mann–Whitney U test, z-scored as Z = (U − nm/2 + 1/2) / √(nm(n+m+1)/12) (U of Q, "Q nearer" = small U);
  C_T = Σ P(π) Z(π) / Σ P(π) over cells holding at least ``min_cell_samples`` generated points (the paper's τ).
  C_T ≪ 0 (e.g. < −3): data copying; ≈ 0: like unseen real data; ≫ 0: farther from the training set than real
  data (underfitting).

A gallery of the closest synthetic/training pairs: the training images come from ``data`` (the training data
folder) when given, else the table names the training files. ``data`` without a known index builds one in memory.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from services.metrics.errors import MetricsError
from services.metrics.evaluation import stats
from services.metrics.evaluation.indexes import SPACES, TrainingIndex, resolve_index
from services.metrics.evaluation.indexes.neighbours import assign_cells, fit_cells, in_cell_nearest, nearest
from services.metrics.evaluation.inputs import DataSpec, SyntheticSet
from services.metrics.evaluation.progress import ProgressFn, Steps
from services.metrics.evaluation.registry import Evaluation, register_evaluation
from services.metrics.evaluation.result import EvaluationResult, Figure, Provenance, Subject, Table

Space = Literal["pixel", "inception", "cxr-encoder"]
COPYING_Z = -3.0  # C_T below this reads as data copying (the paper's illustrations flag C_T ≪ 0)


class MemorisationOptions(BaseModel):
    index: str | None = Field(None, description="training-set index: shipped (nih-cxr64-train, kermany-train) or "
                                                "built into $SYNTHRAD_HOME/indexes; default: the index of the batch's "
                                                "model, found from its descriptor's training block")
    spaces: list[Space] = Field(default_factory=lambda: list(SPACES),
                                description="feature spaces: pixel (random projection of the 64x64 image), "
                                            "inception (FID Inception pool3), cxr-encoder")
    quantile: float = Field(0.01, gt=0.0, lt=0.5,
                            description="near-copy threshold: the quantile of the real held-out images' distances "
                                        "to the training set (0.01: flag a synthetic image nearer to its nearest "
                                        "training image than 99 % of real held-out images are)")
    gallery: int = Field(16, ge=0, le=64, description="closest synthetic/training pairs shown in the report")
    gallery_space: Space | None = Field(None, description="space ranking the gallery's pairs (default: the first "
                                                          "of spaces)")
    data: DataSpec | None = Field(None, description="the training data folder (optional): the gallery's real "
                                                    "images; builds an index in memory when none is known")
    cells: int | None = Field(None, ge=2, le=200, description="C_T: k-means cells of the training set (default: "
                                                               "the index's, 10)")
    min_cell_samples: int = Field(5, ge=1, description="C_T: a cell counts when it holds at least this many "
                                                       "synthetic images (the paper's tau)")
    ci_level: float = Field(0.95, gt=0.5, lt=1.0, description="level of the Wilson CIs")

    @field_validator("spaces")
    @classmethod
    def _spaces(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one space")
        return [s for s in SPACES if s in v]  # canonical order, no repeats


# ---- the measures -----------------------------------------------------------------------------------------------
def authentic(distance: np.ndarray, nearest_index: np.ndarray, train_nn: np.ndarray) -> np.ndarray:
    """Alaa et al.: sample i (nearest training point j, at ``distance[i]``) is authentic unless it is nearer to
    j than j's nearest other training point (``train_nn[j]``)."""
    return np.asarray(distance) >= np.asarray(train_nn)[np.asarray(nearest_index)]


def mann_whitney_z(q: np.ndarray, p: np.ndarray) -> float:
    """C_T's in-cell statistic: U of sample ``q`` against ``p`` (average ranks for ties), z-scored under H0 with
    the reference code's continuity correction. Negative: ``q``'s distances are smaller."""
    from scipy.stats import rankdata

    q, p = np.asarray(q, np.float64), np.asarray(p, np.float64)
    m, n = len(q), len(p)
    ranks = rankdata(np.concatenate([q, p]))
    u = float(ranks[:m].sum() - m * (m + 1) / 2.0)
    return (u - (n * m / 2.0 - 0.5)) / float(np.sqrt(n * m * (n + m + 1) / 12.0))


def c_t(gen_dist: np.ndarray, gen_cells: np.ndarray, test_dist: np.ndarray, test_cells: np.ndarray, k: int,
        min_cell_samples: int) -> tuple[float | None, list[dict[str, Any]]]:
    """C_T from in-cell NN distances and cells of the generated and held-out points; per-cell rows."""
    n = len(test_dist)
    rows, num, den = [], 0.0, 0.0
    for c in range(k):
        g, t = gen_dist[gen_cells == c], test_dist[test_cells == c]
        used = len(g) >= min_cell_samples and len(t) > 0
        z = mann_whitney_z(g, t) if (len(g) and len(t)) else None
        w = len(t) / n if n else 0.0
        rows.append({"cell": c, "synthetic": int(len(g)), "heldout": int(len(t)), "z": z, "weight": w, "used": used})
        if used:
            num += w * float(z)
            den += w
    return (num / den if den > 0 else None), rows


def _space_name(space: str, index: TrainingIndex) -> str:
    st = index.stamp(space)
    if space == "pixel":
        return f"pixel (JL projection {st.get('dims')}-d, seed {st.get('seed')})"
    return f"{space} ({(st.get('weights_sha256') or '?')[:12]})"


def _measure_space(index: TrainingIndex, space: str, feats: np.ndarray, opts: MemorisationOptions,
                   warnings: list[str]) -> dict[str, Any]:
    sd = index.space(space)
    dist, idx = nearest(feats, sd.train)
    thr = sd.threshold(opts.quantile)
    flags = dist <= thr
    k, n = int(flags.sum()), int(len(flags))
    lo, hi = stats.wilson_interval(k, n, opts.ci_level)
    auth = authentic(dist, idx, sd.train_nn)
    auth_ref = authentic(sd.heldout_nn, sd.heldout_nn_index, sd.train_nn)
    if opts.cells is None or opts.cells == sd.cells:
        centres, tc, hc, hd = sd.centres, sd.train_cells, sd.heldout_cells, sd.heldout_cell_nn
    else:
        centres = fit_cells(sd.train, opts.cells)
        tc, hc = assign_cells(sd.train, centres), assign_cells(sd.heldout, centres)
        hd = in_cell_nearest(sd.heldout, hc, sd.train, tc)
    gc = assign_cells(feats, centres)
    gd = in_cell_nearest(feats, gc, sd.train, tc)
    ct, cell_rows = c_t(gd, gc, hd, hc, len(centres), opts.min_cell_samples)
    used = sum(r["used"] for r in cell_rows)
    if ct is None:
        warnings.append(f"C_T [{space}]: no cell holds {opts.min_cell_samples} synthetic images; C_T needs a larger "
                        f"batch (or fewer cells / a smaller min_cell_samples)")
    elif used < len(cell_rows):
        warnings.append(f"C_T [{space}]: {len(cell_rows) - used} of {len(cell_rows)} cells hold fewer than "
                        f"{opts.min_cell_samples} synthetic images and are left out")
    return {"space": space, "distance": dist, "nearest": idx, "threshold": thr, "flags": flags, "k": k, "n": n,
            "ci": (lo, hi), "authentic": auth, "authenticity": float(auth.mean()) if n else None,
            "authenticity_heldout": float(auth_ref.mean()), "ct": ct, "cells": cell_rows, "cells_used": used,
            "heldout_median": float(np.median(sd.heldout_nn)), "cell_of": gc,
            "memorised": lo is not None and lo > opts.quantile}


# ---- inputs --------------------------------------------------------------------------------------------------------
def _index_and_real(syn: SyntheticSet, opts: MemorisationOptions, warnings: list[str]):
    """The index (named, the model's, or built from ``data``) and, when built from ``data``, the loaded data."""
    from services.metrics.evaluation.inputs import load_real

    if opts.index or opts.data is None:
        return resolve_index(opts.index, syn.model_id), None
    try:
        return resolve_index(None, syn.model_id), None
    except MetricsError:
        pass
    from services.metrics.evaluation.indexes.build import DEFAULT_CELLS, build_index

    res = int(syn.resolution or syn.images.shape[-1])
    real = load_real(opts.data, res)
    warnings.append(f"no training-set index is known for model {syn.model_id or '(unknown)'}; built one in memory "
                    f"from {opts.data.display} (its train split = the training set, its "
                    f"{'valid' if opts.data.split_by == 'recorded' else 'test'} split = held-out)")
    name = "ad-hoc-" + "".join(ch if ch.isalnum() else "-" for ch in opts.data.display.lower())[:40]
    return build_index(real, name, opts.spaces, opts.cells or DEFAULT_CELLS), real


def _training_images(index: TrainingIndex, ids: list[str], data: DataSpec, real, warnings: list[str]
                     ) -> dict[str, np.ndarray]:
    """The training images named ``ids`` (read from ``data`` at the index's resolution)."""
    if real is not None:
        pos = {t: i for i, t in enumerate(real.train_ids)}
        return {t: real.train_images[pos[t]] for t in ids if t in pos}
    from pathlib import Path

    from services.common.datasets import XrayDataset, load_records
    from services.metrics.evaluation.inputs import resolve_layout

    root = Path(data.path).expanduser()
    src = index.source
    try:
        recs = load_records(root, resolve_layout(data), views=data.views or "all", split="train",
                            split_by=src.get("split_by") or data.split_by)
    except Exception as e:  # noqa: BLE001 - the gallery is optional: say why it has no real images
        warnings.append(f"gallery: cannot read the training data {data.display!r} ({e})")
        return {}
    want = set(ids)
    keep = [r for r in recs if str(Path(r.path).resolve().relative_to(root.resolve())) in want]
    if not keep:
        warnings.append(f"gallery: none of the matched training images is in {data.display!r} (is it the index's "
                        f"dataset, {src.get('data')}?)")
        return {}
    ds = XrayDataset(keep, index.resolution, cache_dir=None)
    out = {}
    for i, r in enumerate(keep):
        out[str(Path(r.path).resolve().relative_to(root.resolve()))] = (np.asarray(ds[i][0])[0] + 1.0) / 2.0
    missing = want - set(out)
    if missing:
        warnings.append(f"gallery: {len(missing)} matched training image(s) not found in {data.display!r}")
    return out


# ---- the evaluation ---------------------------------------------------------------------------------------------------
def run(synthetic: SyntheticSet, options: MemorisationOptions, progress: ProgressFn) -> EvaluationResult:
    syn, opts = synthetic, options
    if syn.n == 0:
        raise MetricsError("memorisation needs at least one synthetic image")
    gspace = opts.gallery_space or opts.spaces[0]
    if gspace not in opts.spaces:
        raise MetricsError(f"gallery_space {gspace!r} is not one of spaces ({', '.join(opts.spaces)})")
    warnings: list[str] = []
    steps = Steps(syn.n * len(opts.spaces) + len(opts.spaces) + 2, progress)
    index, real = _index_and_real(syn, opts, warnings)
    missing = [s for s in opts.spaces if s not in index.spaces]
    if missing:
        raise MetricsError(f"training index {index.name!r} has no {', '.join(missing)} features; it has "
                           f"{', '.join(index.spaces)}")
    steps.step("index")
    if syn.images.shape[-1] != index.resolution:
        warnings.append(f"the batch's images are {syn.images.shape[-1]} px, the index's {index.resolution} px: "
                        "they were resized to it")
    per: dict[str, dict[str, Any]] = {}
    for space in opts.spaces:
        feats = index.featurize(space, syn.images, progress=lambda k, s=space: steps.step(f"{s} features", k))
        per[space] = _measure_space(index, space, feats, opts, warnings)
        steps.step(f"{space} neighbours")

    ids = index.train_ids
    g = per[gspace]
    order = np.argsort(g["distance"], kind="stable")[:opts.gallery]
    pair_ids = [ids[int(g["nearest"][i])] if ids else str(int(g["nearest"][i])) for i in order]

    figures: list[Figure] = []
    caption = (f"{len(order)} closest pairs by {gspace} distance (threshold {g['threshold']:.4g} = the "
               f"{opts.quantile:g} quantile of held-out distances)")
    if opts.gallery and (opts.data is not None or real is not None):
        imgs = _training_images(index, pair_ids, opts.data, real, warnings)
        from services.metrics.evaluation.inputs import resize

        tiles = []
        for i, t in zip(order, pair_ids):
            if t in imgs:
                tiles += [resize(syn.images[i:i + 1], index.resolution)[0], np.asarray(imgs[t], np.float32)]
        if tiles:
            figures.append(Figure.from_image_grid(np.stack(tiles), "Closest synthetic / training pairs",
                                                  caption + "; each pair: synthetic left, training right", cols=8))
    if opts.gallery and not figures:
        from services.metrics.evaluation.inputs import resize

        figures.append(Figure.from_image_grid(resize(syn.images[order], index.resolution),
                                              "Synthetic images nearest to the training set",
                                              caption + "; their training images are named in the table "
                                                        "(pass data to see them)", cols=8))
    steps.step("gallery")

    tables = _tables(index, per, opts, syn, order, pair_ids, gspace)
    memorised = [s for s in opts.spaces if per[s]["memorised"]]
    headline: dict[str, Any] = {"index": index.name, "memorised": bool(memorised)}
    for s in opts.spaces:
        headline[f"flagged[{s}]"] = per[s]["k"] / per[s]["n"]
    for s in opts.spaces:
        headline[f"authenticity[{s}]"] = per[s]["authenticity"]
    for s in opts.spaces:
        headline[f"C_T[{s}]"] = per[s]["ct"]
    any_flag = np.zeros(syn.n, bool)
    for s in opts.spaces:
        any_flag |= per[s]["flags"]
    headline["flagged_any"] = float(any_flag.mean())

    details = {
        "memorised_spaces": memorised,
        "thresholds": {s: per[s]["threshold"] for s in opts.spaces},
        "images": [{
            "index": i, "seed": int(syn.seeds[i]) if i < len(syn.seeds) else i,
            "near_copy": bool(any_flag[i]),
            **{s: {"distance": float(per[s]["distance"][i]),
                   "nearest": ids[int(per[s]["nearest"][i])] if ids else int(per[s]["nearest"][i]),
                   "flagged": bool(per[s]["flags"][i]), "authentic": bool(per[s]["authentic"][i]),
                   "cell": int(per[s]["cell_of"][i])} for s in opts.spaces},
        } for i in range(syn.n)],
        "cells": {s: per[s]["cells"] for s in opts.spaces},
    }
    prov = Provenance(
        extractors={s: (index.stamp(s).get("weights_sha256") or f"jl-projection seed {index.stamp(s).get('seed')}")
                    for s in opts.spaces},
        seeds=[int(v) for v in syn.seeds],
        set_sizes={"synthetic": syn.n, "real_train": index.n_train, "real_heldout": index.n_heldout},
        data={"index": index.summary(), "spaces": {s: _space_name(s, index) for s in opts.spaces},
              "gallery_data": opts.data.display if opts.data else None},
        options=opts.model_dump(mode="json"))
    return EvaluationResult(kind="memorisation",
                            subject=Subject(description=syn.description, batch_id=syn.batch_id, model_id=syn.model_id,
                                            model_hash=syn.model_hash, n=syn.n),
                            provenance=prov, headline=headline, tables=tables, figures=figures, warnings=warnings,
                            details=details)


def _tables(index: TrainingIndex, per: dict, opts: MemorisationOptions, syn: SyntheticSet, order, pair_ids,
            gspace: str) -> list[Table]:
    sizes = f"{syn.n} synthetic vs {index.n_train} training / {index.n_heldout} held-out images of index {index.name}"
    near = Table(title="Near copies of the training set",
                 columns=["space", "threshold", "flagged", "n", "fraction", "CI low", "CI high", "held-out rate",
                          "median NN distance", "held-out median"],
                 rows=[[_space_name(s, index), p["threshold"], p["k"], p["n"], p["k"] / p["n"], p["ci"][0], p["ci"][1],
                        opts.quantile, float(np.median(p["distance"])), p["heldout_median"]]
                       for s, p in per.items()],
                 note=f"Flagged: distance to the nearest training image ≤ the {opts.quantile:g} quantile of the real "
                      f"held-out images' distances ({opts.ci_level:.0%} Wilson CI). {sizes}.")
    auth = Table(title="Authenticity (Alaa et al. 2022)", columns=["space", "authenticity", "held-out real"],
                 rows=[[_space_name(s, index), p["authenticity"], p["authenticity_heldout"]] for s, p in per.items()],
                 note="Fraction of images not nearer to their nearest training image than that image's nearest other "
                      f"training image; real held-out images give the baseline. {sizes}.")
    ct = Table(title="Data-copying test C_T (Meehan et al. 2020)",
               columns=["space", "C_T", "cells used", "cells", "reading"],
               rows=[[_space_name(s, index), p["ct"], p["cells_used"], len(p["cells"]), _reading(p["ct"])]
                     for s, p in per.items()],
               note=f"Weighted mean of in-cell Mann-Whitney z-scores (cells with ≥ {opts.min_cell_samples} synthetic "
                    f"images); < {COPYING_Z:g}: data copying, ≈ 0: like unseen real data, > 0: farther than real. "
                    f"{sizes}.")
    g = per[gspace]
    pairs = Table(title=f"Closest pairs ({gspace})", columns=["rank", "image", "seed", "training image", "distance",
                                                              "flagged"],
                  rows=[[r + 1, int(i), int(syn.seeds[i]) if i < len(syn.seeds) else int(i), t,
                         float(g["distance"][i]), bool(g["flags"][i])] for r, (i, t) in enumerate(zip(order, pair_ids))],
                  note="Training images by file name relative to the dataset folder.")
    return [near, auth, ct, pairs] if len(order) else [near, auth, ct]


def _reading(ct: float | None) -> str:
    if ct is None:
        return "n/a (too few images per cell)"
    if ct < COPYING_Z:
        return "data copying"
    if ct > -COPYING_Z:
        return "farther from the training set than real data"
    return "like unseen real data"


register_evaluation(Evaluation(kind="memorisation", options=MemorisationOptions, run=run,
                               summary="near copies of the training set (pixel / Inception / cxr-encoder nearest "
                                       "neighbours, calibrated on held-out real images), authenticity, C_T",
                               needs_data=False))
