"""Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception pool3).

    d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁ Σ₂)

All in float64. ``tr √(Σ₁Σ₂)`` comes from a *symmetric* eigendecomposition: with S = √Σ₁ (from ``eigh``
of Σ₁, negative round-off eigenvalues clipped to 0), Σ₁Σ₂ is similar to the symmetric PSD matrix S Σ₂ S, so
tr √(Σ₁Σ₂) = Σᵢ √λᵢ(S Σ₂ S). No ``scipy.linalg.sqrtm`` of a non-symmetric product, hence no imaginary parts
and no "singular product" retries.

When raw features are at hand and min(n₁, n₂) < d (small sets, e.g. 200 images vs 2048 dims), the same
eigenvalues come cheaper from the n₁×n₁ matrix C Cᵀ with C = A Bᵀ / √((n₁−1)(n₂−1)) (A, B the centred
features): the non-zero eigenvalues of Σ₁Σ₂ = AᵀA BᵀB/((n₁−1)(n₂−1)) equal those of (ABᵀ)(BAᵀ)/(…).
This also makes bootstrap replicates cheap.

Sample-size policy: n < 2 in either set → ``MetricsError`` (no covariance). n ≤ d → the covariance is
rank-deficient (rank ≤ n−1): the value is still computed and well defined, but it is biased upwards and
not comparable with FIDs of other set sizes; a warning is returned/raised (``SampleSizeWarning``). Compare
FIDs only at equal n; use KID for small sets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from services.metrics import defaults
from services.metrics.errors import MetricsError
from services.metrics.naming import score_name
from services.metrics.registry import FEATURES, Measure, MeasureInput, Outcome, register_measure
from services.metrics.result import Score


class SampleSizeWarning(UserWarning):
    """Fewer samples than feature dimensions: covariance rank-deficient, estimate biased."""


def check_sizes(n1: int, n2: int, dims: int, what: str = "Fréchet distance") -> list[str]:
    """Raise for n < 2; return warnings for n ≤ dims."""
    for label, n in (("real", n1), ("synthetic", n2)):
        if n < 2:
            raise MetricsError(
                f"too few images for the {what}: the {label} set has {n} (need at least 2 for a covariance; "
                f"use ≥ {dims + 1} for a full-rank {dims}-d estimate, ideally ≥ 2,000)"
            )
    msgs = []
    for label, n in (("real", n1), ("synthetic", n2)):
        if n <= dims:
            msgs.append(
                f"{what}: the {label} set has {n} samples ≤ {dims} feature dims — covariance rank-deficient, "
                "value biased upwards; compare only with scores at the same set sizes"
            )
    return msgs


@dataclass
class GaussianStats:
    """Mean and covariance (float64, unbiased n−1) of a feature set."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, feats: np.ndarray) -> "GaussianStats":
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2:
            raise MetricsError(f"features must be 2-D (n, dims), got {x.shape}")
        if x.shape[0] < 2:
            raise MetricsError(f"too few samples for a covariance: {x.shape[0]} (need ≥ 2)")
        mu = x.mean(axis=0)
        xc = x - mu
        return cls(mu, xc.T @ xc / (x.shape[0] - 1), x.shape[0])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, sqrt_sigma1: np.ndarray | None = None) -> float:
    """tr √(Σ₁Σ₂) via eigenvalues of the symmetric √Σ₁ Σ₂ √Σ₁ (float64)."""
    s = _psd_sqrt(np.asarray(sigma1, np.float64)) if sqrt_sigma1 is None else sqrt_sigma1
    m = s @ np.asarray(sigma2, np.float64) @ s
    m = (m + m.T) / 2  # exact symmetry for eigvalsh
    lam = np.linalg.eigvalsh(m)
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, sqrt_sigma1: np.ndarray | None = None
) -> float:
    """d² between N(μ₁, Σ₁) and N(μ₂, Σ₂). Same formula as pytorch-fid's ``calculate_frechet_distance``."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise MetricsError(
            f"feature dimensions differ: mean {mu1.shape} vs {mu2.shape}, cov {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    tr = trace_sqrt_product(sigma1, sigma2, sqrt_sigma1)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr)


def _fd_gram(x1: np.ndarray, x2: np.ndarray) -> float:
    """Fréchet distance from raw features through the small n×n route (exact, for min(n) < d)."""
    a = x1 - x1.mean(0)
    b = x2 - x2.mean(0)
    n1, n2 = len(a), len(b)
    c = (a @ b.T) / np.sqrt((n1 - 1) * (n2 - 1))
    g = c @ c.T if n1 <= n2 else c.T @ c
    lam = np.linalg.eigvalsh((g + g.T) / 2)
    tr_sqrt = np.sqrt(np.clip(lam, 0.0, None)).sum()
    diff = x1.mean(0) - x2.mean(0)
    tr1 = (a * a).sum() / (n1 - 1)
    tr2 = (b * b).sum() / (n2 - 1)
    return float(diff @ diff + tr1 + tr2 - 2.0 * tr_sqrt)


def frechet_distance_features(
    feats1: np.ndarray, feats2: np.ndarray, warn: bool = True, method: str = "auto"
) -> float:
    """Fréchet distance of two raw feature sets (n₁, d), (n₂, d), float64. ``method``: auto | eig | gram."""
    x1 = np.asarray(feats1, np.float64)
    x2 = np.asarray(feats2, np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise MetricsError(f"feature sets must be (n, d) with equal d; got {x1.shape} and {x2.shape}")
    msgs = check_sizes(len(x1), len(x2), x1.shape[1])
    if warn:
        for m in msgs:
            warnings.warn(m, SampleSizeWarning, stacklevel=2)
    if method == "gram" or (method == "auto" and min(len(x1), len(x2)) < x1.shape[1]):
        return _fd_gram(x1, x2)
    s1, s2 = GaussianStats.from_features(x1), GaussianStats.from_features(x2)
    return frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)


def bootstrap_fd(
    feats1: np.ndarray, feats2: np.ndarray, n_boot: int = defaults.BOOTSTRAP_SMALL_SETS, seed: int = defaults.SEED,
    level: float = defaults.CI_LEVEL, point: float | None = None,
) -> tuple[float, float, np.ndarray]:
    """Bootstrap CI of the Fréchet distance (both sets resampled with replacement, B replicates).

    The FID estimator is biased (it shrinks with n); resampled sets hold duplicates, so replicates sit above
    the point estimate. The returned interval is the *centred* percentile interval (see ``centred_interval``):
    it reflects the sampling variability of the two sets around the estimate. Returns (low, high, replicates).
    """
    x1 = np.asarray(feats1, np.float64)
    x2 = np.asarray(feats2, np.float64)
    rng = np.random.default_rng(seed)
    d = x1.shape[1]
    vals = np.empty(n_boot)
    use_gram = min(len(x1), len(x2)) < d
    if use_gram:
        # precompute Gram blocks once; each replicate only re-indexes and double-centres them
        g12 = x1 @ x2.T
        g11 = x1 @ x1.T
        g22 = x2 @ x2.T
    for b in range(n_boot):
        i1 = rng.integers(0, len(x1), len(x1))
        i2 = rng.integers(0, len(x2), len(x2))
        if use_gram:
            n1, n2 = len(i1), len(i2)
            k = g12[np.ix_(i1, i2)]
            c = k - k.mean(1, keepdims=True) - k.mean(0, keepdims=True) + k.mean()  # = A Bᵀ
            c = c / np.sqrt((n1 - 1) * (n2 - 1))
            g = c @ c.T if n1 <= n2 else c.T @ c
            tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((g + g.T) / 2), 0, None)).sum()
            k11 = g11[np.ix_(i1, i1)]
            k22 = g22[np.ix_(i2, i2)]
            tr1 = (np.trace(k11) - k11.sum() / n1) / (n1 - 1)
            tr2 = (np.trace(k22) - k22.sum() / n2) / (n2 - 1)
            m1 = x1[i1].mean(0)
            m2 = x2[i2].mean(0)
            diff = m1 - m2
            vals[b] = diff @ diff + tr1 + tr2 - 2 * tr_sqrt
        else:
            vals[b] = frechet_distance_features(x1[i1], x2[i2], warn=False, method="eig")
    if point is None:
        point = frechet_distance_features(x1, x2, warn=False)
    lo, hi = centred_interval(point, vals, level, bounds=(0.0, None))  # a Fréchet distance is ≥ 0
    return lo, hi, vals


def centred_interval(
    point: float, replicates: np.ndarray, level: float = defaults.CI_LEVEL, bounds: tuple[float | None, float | None] = (None, None)
) -> tuple[float, float]:
    """Centred percentile interval: θ̂ + quantiles of (θ*_b − mean θ*), clipped to the measure's valid range.

    Resampling with replacement duplicates ~37 % of the points, which shifts biased estimators such as FID
    (upwards) and k-NN measures; the plain percentile interval can then miss the point estimate entirely.
    Centring keeps the bootstrap's spread (sampling variability) around the estimate.

    The centred (basic) interval can leave the valid range (FID < 0, recall > 1) and, with skewed replicates
    (e.g. recall 0 in all but a few replicates, so the mean exceeds the upper quantile), can even exclude the
    estimate. The result is therefore clipped to ``bounds`` (``None`` = unbounded) and widened to always
    satisfy ``lo ≤ point ≤ hi``."""
    a = (1 - level) / 2
    reps = np.asarray(replicates, np.float64)
    q = np.quantile(reps - reps.mean(), [a, 1 - a]) if len(reps) else np.zeros(2)
    point = float(point)
    lo_b, hi_b = bounds
    if lo_b is not None:
        point = max(point, lo_b)
    if hi_b is not None:
        point = min(point, hi_b)
    lo, hi = min(point, point + float(q[0])), max(point, point + float(q[1]))
    if lo_b is not None:
        lo = max(lo, lo_b)
    if hi_b is not None:
        hi = min(hi, hi_b)
    return float(lo), float(hi)


def _compute(inp: MeasureInput) -> Outcome:
    fr, fs = inp.real_features, inp.synthetic_features
    name, dims = score_name("fid", inp.extractor), fr.shape[1]
    inp.warnings.extend(check_sizes(len(fr), len(fs), dims, name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SampleSizeWarning)
        if min(len(fr), len(fs)) < dims:
            val = frechet_distance_features(fr, fs, warn=False)
        else:  # the sets' float64 running statistics
            r_st, s_st = inp.real.stats[inp.extractor], inp.synthetic.stats[inp.extractor]
            val = frechet_distance(r_st.mean, r_st.cov, s_st.mean, s_st.cov)
    val = max(val, 0.0)  # a distance: only round-off makes it negative (identical sets)
    score = Score(metric="fid", name=name, value=val, extractor=inp.extractor,
                  params={"n_real": len(fr), "n_synthetic": len(fs), "dims": dims})
    if inp.bootstrap > 0:
        lo, hi, _ = bootstrap_fd(fr, fs, n_boot=inp.bootstrap, seed=inp.seed, level=inp.ci_level, point=val)
        score.ci_low, score.ci_high, score.ci_level = lo, hi, inp.ci_level
        score.params["bootstrap"] = inp.bootstrap
    return Outcome([score])


register_measure(Measure(
    name="fid", inputs=frozenset({FEATURES}), compute=_compute,
    summary="Fréchet distance (FID for the inception extractor, else FD_<extractor>), bootstrap CI",
))
