"""k-NN helpers of the manifold measures (``ipr.py``, ``prdc.py``): Euclidean distances in float64, computed in
row blocks (memory O(block × n))."""

from __future__ import annotations

import numpy as np

from services.metrics import defaults
from services.metrics.errors import MetricsError


def sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def pairwise_distances(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray | None = None, b_sq: np.ndarray | None = None) -> np.ndarray:
    a_sq = sq_norms(a) if a_sq is None else a_sq
    b_sq = sq_norms(b) if b_sq is None else b_sq
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.clip(d2, 0.0, None))


def check_sets(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as float64 (n, d) with equal d and more than ``k`` rows, else :class:`MetricsError`."""
    r = np.asarray(real, np.float64)
    f = np.asarray(fake, np.float64)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise MetricsError(f"feature sets must be (n, d) with equal d; got {r.shape} and {f.shape}")
    for label, x in (("real", r), ("synthetic", f)):
        if len(x) <= k:
            raise MetricsError(f"too few images for k-NN measures with k={k}: the {label} set has {len(x)} (need > {k})")
    return r, f


def knn_radii(x: np.ndarray, k: int, batch_size: int = defaults.KNN_BATCH) -> np.ndarray:
    """Distance from each row to its k-th nearest neighbour in ``x`` (itself excluded)."""
    sq = sq_norms(x)
    out = np.empty(len(x))
    for s in range(0, len(x), batch_size):
        d = pairwise_distances(x[s : s + batch_size], x, sq[s : s + batch_size], sq)
        out[s : s + batch_size] = np.partition(d, k, axis=1)[:, k]  # position 0 is the point itself
    return out


def balls_containing(queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, batch_size: int, strict: bool) -> np.ndarray:
    """Per query: number of balls (centre, radius) containing it (``d < r`` if ``strict``, else ``d ≤ r``)."""
    csq = sq_norms(centres)
    counts = np.empty(len(queries), dtype=np.int64)
    for s in range(0, len(queries), batch_size):
        d = pairwise_distances(queries[s : s + batch_size], centres, None, csq)
        inside = d < radii[None, :] if strict else d <= radii[None, :]
        counts[s : s + batch_size] = inside.sum(1)
    return counts
