"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
k(x, y) = (xᵀy / d + 1)³, averaged over random subsets; the std over subsets is reported.

Subset sampling matches torch-fidelity / the MMD-GAN code: ``np.random.RandomState(seed)``, for each subset
first ``choice(n_a, m, replace=False)`` from set A then from set B. With the same seed and order the numbers
equal torch-fidelity's ``kid_features_to_metric(A, B)``.
"""

from __future__ import annotations

import numpy as np

from services.metrics.errors import MetricsError


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * g + coef0) ** degree


def mmd2_unbiased(kxx: np.ndarray, kxy: np.ndarray, kyy: np.ndarray) -> float:
    """Unbiased MMD² (diagonals of K_XX, K_YY dropped; K_XY full) for equal subset sizes m."""
    m = kxx.shape[0]
    sxx = kxx.sum() - np.trace(kxx)
    syy = kyy.sum() - np.trace(kyy)
    return float((sxx + syy) / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kid(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD² over ``subsets`` random subsets of ``subset_size`` from each set.

    ``subset_size`` is clipped to the smaller set (needs ≥ 2 per set).
    """
    a = np.asarray(feats_a)
    b = np.asarray(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise MetricsError(f"feature sets must be (n, d) with equal d; got {a.shape} and {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise MetricsError(f"too few images for KID: {len(a)} and {len(b)} (need ≥ 2 in each set)")
    rng = np.random.RandomState(seed)
    vals = np.zeros(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = polynomial_kernel(x, x, degree, gamma, coef0)
        kyy = polynomial_kernel(y, y, degree, gamma, coef0)
        kxy = polynomial_kernel(x, y, degree, gamma, coef0)
        vals[i] = mmd2_unbiased(kxx, kxy, kyy)
    return float(vals.mean()), float(vals.std())
