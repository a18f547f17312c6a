"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
k(x, y) = (xᵀy / d + 1)³, averaged over random subsets; the std over subsets is reported.

Subset sampling matches torch-fidelity / the MMD-GAN code: ``np.random.RandomState(seed)``, for each subset
first ``choice(n_a, m, replace=False)`` from set A then from set B. With the same seed and order the numbers
equal torch-fidelity's ``kid_features_to_metric(A, B)``.

Subset size for small sets (``choose_subset_size``): subsets are drawn *without* replacement, so a subset as
large as the smaller set is that whole set every time — all subsets identical (for equal-size sets) and a
std of 0 that looks like certainty. torch-fidelity refuses a subset size above the set size and clean-fid
silently clamps it to the set size; here a requested size ≥ the smaller set's n is lowered to ⌊n/2⌋ (so
subsets differ and the std over subsets reflects sampling noise) and a warning says so. With fewer than 4
images in a set no such size exists: the whole set is used, with a warning that the std is meaningless.
"""

from __future__ import annotations

import warnings

import numpy as np

from services.metrics import defaults
from services.metrics.errors import MetricsError
from services.metrics.naming import score_name
from services.metrics.registry import FEATURES, Measure, MeasureInput, Outcome, register_measure
from services.metrics.result import Score


class KIDSubsetWarning(UserWarning):
    """The requested KID subset size was lowered (sets smaller than the subset size)."""


def choose_subset_size(n_a: int, n_b: int, requested: int = defaults.KID_SUBSET_SIZE) -> tuple[int, str | None]:
    """(subset size, warning or None): ``requested`` if both sets are larger, else ⌊min(n)/2⌋ (see module doc)."""
    n = min(n_a, n_b)
    if n < 2:
        raise MetricsError(f"too few images for KID: {n_a} and {n_b} (need ≥ 2 in each set)")
    if requested < 2:
        raise MetricsError(f"KID subset size must be ≥ 2, got {requested}")
    if requested < n:
        return requested, None
    if n < 4:
        return n, (f"KID: only {n} images in the smaller set — every subset is the whole set, so the std over "
                   "subsets (0) says nothing about its noise; use many more images")
    m = n // 2
    return m, (f"KID: subset size {requested} ≥ the smaller set ({n} images); using subsets of {m} (half the "
               f"smaller set) so that subsets differ and the std over subsets shows the sampling noise "
               f"(torch-fidelity would refuse, clean-fid would silently use {n} and report std 0)")


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
    subsets: int = defaults.KID_SUBSETS,
    subset_size: int = defaults.KID_SUBSET_SIZE,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = defaults.SEED,
) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD² over ``subsets`` random subsets of ``subset_size`` from each set.

    A ``subset_size`` ≥ the smaller set is lowered by :func:`choose_subset_size` (``KIDSubsetWarning``);
    needs ≥ 2 per set.
    """
    a = np.asarray(feats_a)
    b = np.asarray(feats_b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise MetricsError(f"feature sets must be (n, d) with equal d; got {a.shape} and {b.shape}")
    m, msg = choose_subset_size(len(a), len(b), subset_size)
    if msg:
        warnings.warn(msg, KIDSubsetWarning, stacklevel=2)
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


def _compute(inp: MeasureInput) -> Outcome:
    fr, fs = inp.real_features, inp.synthetic_features
    subsets = inp.options["kid_subsets"]
    # a subset as large as the smaller set is that set every time (std 0): lowered, with a warning
    m, msg = choose_subset_size(len(fs), len(fr), inp.options["kid_subset_size"])
    if msg:
        inp.warnings.append(msg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean, std = kid(fs, fr, subsets=subsets, subset_size=m, seed=inp.seed)
    if m < 100:
        inp.warnings.append(f"KID subsets of {m} images are small; the std ({std:.2g}) shows how noisy it is")
    return Outcome([Score(metric="kid", name=score_name("kid", inp.extractor), value=mean, std=std,
                          extractor=inp.extractor,
                          params={"subsets": subsets, "subset_size": m, "kernel": "(x·y/d + 1)^3"})])


register_measure(Measure(
    name="kid", inputs=frozenset({FEATURES}), compute=_compute,
    options={"kid_subsets": defaults.KID_SUBSETS, "kid_subset_size": defaults.KID_SUBSET_SIZE},
    summary="kernel distance: unbiased MMD², cubic kernel (KID for the inception extractor, else KID_<extractor>)",
))
