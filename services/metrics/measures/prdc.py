"""k-NN manifold measures on feature sets, with batched distance computation (memory O(batch × n)).

* Improved precision / recall — Kynkäänniemi et al. 2019 (NVlabs ``precision-recall`` code): each set's
  manifold is the union of balls around its samples with radius = distance to the k-th nearest neighbour
  (k = 3, the sample itself excluded). precision = fraction of synthetic samples inside the real manifold,
  recall = fraction of real samples inside the synthetic manifold. Ball membership is ``d ≤ r`` as in NVlabs.
* Density / coverage — Naeem et al. 2020 (clovaai ``prdc``; k = 5): only the real manifold is used.
  density = 1/(kM) Σⱼ Σᵢ 1[d(Yⱼ, Xᵢ) < rᵢ]; coverage = 1/N Σᵢ 1[minⱼ d(Xᵢ, Yⱼ) < rᵢ] (strict ``<`` as there).
Distances are Euclidean in float64.
"""

from __future__ import annotations

import numpy as np

from services.metrics.errors import MetricsError


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def pairwise_distances(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray | None = None, b_sq: np.ndarray | None = None) -> np.ndarray:
    a_sq = _sq_norms(a) if a_sq is None else a_sq
    b_sq = _sq_norms(b) if b_sq is None else b_sq
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.clip(d2, 0.0, None))


def _check(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(real, np.float64)
    f = np.asarray(fake, np.float64)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise MetricsError(f"feature sets must be (n, d) with equal d; got {r.shape} and {f.shape}")
    for label, x in (("real", r), ("synthetic", f)):
        if len(x) <= k:
            raise MetricsError(f"too few images for k-NN measures with k={k}: the {label} set has {len(x)} (need > {k})")
    return r, f


def knn_radii(x: np.ndarray, k: int, batch_size: int = 1024) -> np.ndarray:
    """Distance from each row to its k-th nearest neighbour in ``x`` (itself excluded)."""
    sq = _sq_norms(x)
    out = np.empty(len(x))
    for s in range(0, len(x), batch_size):
        d = pairwise_distances(x[s : s + batch_size], x, sq[s : s + batch_size], sq)
        out[s : s + batch_size] = np.partition(d, k, axis=1)[:, k]  # position 0 is the point itself
    return out


def _inside(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, batch_size: int, strict: bool) -> np.ndarray:
    """Per query: number of balls (centre, radius) containing it."""
    csq = _sq_norms(centres)
    counts = np.empty(len(queries), dtype=np.int64)
    for s in range(0, len(queries), batch_size):
        d = pairwise_distances(queries[s : s + batch_size], centres, None, csq)
        inside = d < radii[None, :] if strict else d <= radii[None, :]
        counts[s : s + batch_size] = inside.sum(1)
    return counts


def improved_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, batch_size: int = 1024) -> tuple[float, float]:
    """(precision, recall) of Kynkäänniemi et al. 2019."""
    r, f = _check(real, fake, k)
    rr = knn_radii(r, k, batch_size)
    rf = knn_radii(f, k, batch_size)
    precision = float((_inside(f, r, rr, batch_size, strict=False) > 0).mean())
    recall = float((_inside(r, f, rf, batch_size, strict=False) > 0).mean())
    return precision, recall


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5, batch_size: int = 1024) -> tuple[float, float]:
    """(density, coverage) of Naeem et al. 2020."""
    r, f = _check(real, fake, k)
    rr = knn_radii(r, k, batch_size)
    density = float(_inside(f, r, rr, batch_size, strict=True).sum() / (k * len(f)))
    fsq = _sq_norms(f)
    covered = np.empty(len(r), dtype=bool)
    for s in range(0, len(r), batch_size):
        d = pairwise_distances(r[s : s + batch_size], f, None, fsq)
        covered[s : s + batch_size] = d.min(1) < rr[s : s + batch_size]
    return density, float(covered.mean())


def bootstrap_precision_recall(
    real: np.ndarray,
    fake: np.ndarray,
    k: int = 3,
    n_boot: int = 100,
    seed: int = 0,
    level: float = 0.95,
    max_n: int = 5000,
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
    r, f = _check(real, fake, k)
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
    from services.metrics.measures.fid import centred_interval

    p0, r0 = improved_precision_recall(r, f, k=k) if point is None else point
    out = {}
    for name, est, reps in (("precision", p0, ps), ("recall", r0, rs)):
        out[name] = centred_interval(est, reps, level, bounds=(0.0, 1.0))
    return out
