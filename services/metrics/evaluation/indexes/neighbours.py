"""Nearest-neighbour search and the calibration a training-set index holds (float64 arithmetic, row blocks).

One implementation for the index builder and the memorisation evaluation, so a synthetic image's distances are
computed exactly as the stored held-out ones were:

* :func:`nearest` — Euclidean distance of each query to its nearest reference point (optionally excluding the
  query's own row: a training point's distance to its nearest *other* training point);
* :func:`fit_cells` / :func:`assign_cells` — the k-means partition of the training set used by the
  data-copying test C_T (Meehan, Chaudhuri & Dasgupta 2020);
* :func:`in_cell_nearest` — a point's distance to the nearest training point *of its own cell* (C_T's L(·)).
"""

from __future__ import annotations

import numpy as np

BLOCK = 512  # query rows per distance block (memory O(BLOCK × n_reference))


def nearest(query: np.ndarray, reference: np.ndarray, exclude_self: bool = False,
            block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """``(distance, index)`` of each query row's nearest reference row (Euclidean, float64 underneath).

    ``exclude_self``: ``query`` *is* ``reference`` and row ``i`` may not match itself (the nearest other
    point; exact duplicates elsewhere in the set still match at distance 0)."""
    q = np.asarray(query, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise ValueError(f"nearest: shapes {q.shape} and {r.shape} do not match")
    n = len(q)
    if len(r) == 0 or (exclude_self and len(r) < 2):
        raise ValueError("nearest: the reference set has too few points")
    dist = np.empty(n, np.float64)
    idx = np.empty(n, np.int64)
    rr = np.einsum("ij,ij->i", r, r)
    for s in range(0, n, block):
        qb = q[s:s + block]
        d2 = np.einsum("ij,ij->i", qb, qb)[:, None] + rr[None, :] - 2.0 * (qb @ r.T)
        if exclude_self:
            rows = np.arange(len(qb))
            d2[rows, s + rows] = np.inf
        j = np.argmin(d2, axis=1)
        # the expansion loses precision for near-identical points: the winners' distances are recomputed directly
        diff = qb - r[j]
        dist[s:s + block] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        idx[s:s + block] = j
    return dist, idx


def fit_cells(train: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Centres ``(k, d)`` float32 of a k-means partition of the training features (scikit-learn, k-means++,
    ``n_init=10``, fixed seed: the same features give the same cells)."""
    from sklearn.cluster import KMeans

    x = np.asarray(train, dtype=np.float64)
    k = int(max(1, min(k, len(x))))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    return km.cluster_centers_.astype(np.float32)


def assign_cells(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The cell (index of the nearest centre) of each point, int64."""
    return nearest(points, centres)[1]


def in_cell_nearest(points: np.ndarray, cells: np.ndarray, train: np.ndarray, train_cells: np.ndarray) -> np.ndarray:
    """Distance of each point to the nearest training point of its own cell (``inf`` for a cell holding no
    training point, which k-means never leaves empty)."""
    out = np.full(len(points), np.inf, np.float64)
    for c in np.unique(cells):
        sel = np.flatnonzero(cells == c)
        ref = train[train_cells == c]
        if len(ref):
            out[sel] = nearest(points[sel], ref)[0]
    return out
