"""Improved precision / recall — Kynkäänniemi et al. 2019 (NVlabs ``precision-recall`` code).

Each set's manifold is the union of balls around its samples with radius = distance to the k-th nearest
neighbour (k = 3, the sample itself excluded). precision = fraction of synthetic samples inside the real
manifold, recall = fraction of real samples inside the synthetic manifold. Ball membership is ``d ≤ r`` as in
NVlabs. Distances are Euclidean in float64 (``knn.py``). Bootstrap CIs: :func:`bootstrap_precision_recall`.
"""

from __future__ import annotations

import numpy as np

from services.metrics import defaults
from services.metrics.measures.fid import centred_interval
from services.metrics.measures.knn import balls_containing, check_sets, knn_radii, pairwise_distances
from services.metrics.registry import FEATURES, Measure, MeasureInput, Outcome, register_measure
from services.metrics.result import Score


def improved_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = defaults.K_IPR,
                              batch_size: int = defaults.KNN_BATCH) -> tuple[float, float]:
    """(precision, recall) of Kynkäänniemi et al. 2019."""
    r, f = check_sets(real, fake, k)
    rr = knn_radii(r, k, batch_size)
    rf = knn_radii(f, k, batch_size)
    precision = float((balls_containing(f, r, rr, batch_size, strict=False) > 0).mean())
    recall = float((balls_containing(r, f, rf, batch_size, strict=False) > 0).mean())
    return precision, recall


def bootstrap_precision_recall(
    real: np.ndarray,
    fake: np.ndarray,
    k: int = defaults.K_IPR,
    n_boot: int = defaults.BOOTSTRAP_SMALL_SETS,
    seed: int = defaults.SEED,
    level: float = defaults.CI_LEVEL,
    max_n: int = defaults.PR_BOOTSTRAP_MAX_N,
    point: tuple[float, float] | None = None,
) -> dict[str, tuple[float, float]]:
    """Bootstrap CIs (centred percentile, clipped to [0, 1]) of improved precision and recall.

    Both sets are resampled with replacement; in each replicate the k-NN radii are recomputed on the
    resampled set with a point's own copies excluded (a duplicate is not a neighbour), so the manifolds
    carry their own sampling variability. Distances are computed once (float32 matrices; sets above
    ``max_n`` are subsampled to ``max_n`` for the CI only). ``point`` = the reported (precision, recall) the
    intervals are centred on (default: computed here); every interval satisfies 0 ≤ lo ≤ point ≤ hi ≤ 1.
    """
    rng = np.random.default_rng(seed)
    r, f = check_sets(real, fake, k)
    if len(r) > max_n:
        r = r[rng.choice(len(r), max_n, replace=False)]
    if len(f) > max_n:
        f = f[rng.choice(len(f), max_n, replace=False)]
    drr = pairwise_distances(r, r).astype(np.float32)
    dff = pairwise_distances(f, f).astype(np.float32)
    dfr = pairwise_distances(f, r).astype(np.float32)

    def radii(dmat: np.ndarray, idx: np.ndarray) -> np.ndarray:
        m = dmat[np.ix_(idx, idx)]
        m[idx[:, None] == idx[None, :]] = np.inf
        kk = min(k - 1, len(idx) - 2)
        return np.partition(m, kk, axis=1)[:, kk]

    ps, rs = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        ir = rng.integers(0, len(r), len(r))
        jf = rng.integers(0, len(f), len(f))
        rad_r = radii(drr, ir)
        rad_f = radii(dff, jf)
        d = dfr[np.ix_(jf, ir)]  # (fake, real)
        ps[b] = (d <= rad_r[None, :]).any(1).mean()
        rs[b] = (d <= rad_f[:, None]).any(0).mean()
    p0, r0 = improved_precision_recall(r, f, k=k) if point is None else point
    return {name: centred_interval(est, reps, level, bounds=(0.0, 1.0))
            for name, est, reps in (("precision", p0, ps), ("recall", r0, rs))}


def _compute(inp: MeasureInput) -> Outcome:
    fr, fs, k = inp.real_features, inp.synthetic_features, inp.options["k_ipr"]
    p, r = improved_precision_recall(fr, fs, k=k)
    ci = (bootstrap_precision_recall(fr, fs, k=k, n_boot=inp.bootstrap, seed=inp.seed, level=inp.ci_level, point=(p, r))
          if inp.bootstrap > 0 else None)
    scores = []
    for name, v in (("precision", p), ("recall", r)):
        extra = {"ci_low": ci[name][0], "ci_high": ci[name][1], "ci_level": inp.ci_level} if ci else {}
        scores.append(Score(metric="ipr", name=name, value=v, extractor=inp.extractor, **extra,
                            params={"k": k, "definition": "Kynkäänniemi et al. 2019"}))
    return Outcome(scores)


register_measure(Measure(
    name="ipr", inputs=frozenset({FEATURES}), compute=_compute, options={"k_ipr": defaults.K_IPR},
    summary="improved precision / recall (Kynkäänniemi et al. 2019), bootstrap CIs",
))
