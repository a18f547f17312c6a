"""Density / coverage — Naeem et al. 2020 (clovaai ``prdc``; k = 5): only the real manifold is used.

density = 1/(kM) Σⱼ Σᵢ 1[d(Yⱼ, Xᵢ) < rᵢ]; coverage = 1/N Σᵢ 1[minⱼ d(Xᵢ, Yⱼ) < rᵢ] (strict ``<`` as there),
rᵢ the distance of real sample i to its k-th nearest real neighbour. Distances are Euclidean in float64.
"""

from __future__ import annotations

import numpy as np

from services.metrics import defaults
from services.metrics.measures.knn import balls_containing, check_sets, knn_radii, pairwise_distances, sq_norms
from services.metrics.registry import FEATURES, Measure, MeasureInput, Outcome, register_measure
from services.metrics.result import Score


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = defaults.K_PRDC,
                     batch_size: int = defaults.KNN_BATCH) -> tuple[float, float]:
    """(density, coverage) of Naeem et al. 2020."""
    r, f = check_sets(real, fake, k)
    rr = knn_radii(r, k, batch_size)
    density = float(balls_containing(f, r, rr, batch_size, strict=True).sum() / (k * len(f)))
    fsq = sq_norms(f)
    covered = np.empty(len(r), dtype=bool)
    for s in range(0, len(r), batch_size):
        d = pairwise_distances(r[s : s + batch_size], f, None, fsq)
        covered[s : s + batch_size] = d.min(1) < rr[s : s + batch_size]
    return density, float(covered.mean())


def _compute(inp: MeasureInput) -> Outcome:
    k = inp.options["k_prdc"]
    dens, cov = density_coverage(inp.real_features, inp.synthetic_features, k=k)
    return Outcome([Score(metric="prdc", name=name, value=v, extractor=inp.extractor,
                          params={"k": k, "definition": "Naeem et al. 2020"})
                    for name, v in (("density", dens), ("coverage", cov))])


register_measure(Measure(
    name="prdc", inputs=frozenset({FEATURES}), compute=_compute, options={"k_prdc": defaults.K_PRDC},
    summary="density / coverage (Naeem et al. 2020)",
))
