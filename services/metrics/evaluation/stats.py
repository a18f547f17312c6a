"""Statistics shared by the evaluations (scipy.stats / scikit-learn underneath, float64)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class PairedComparison:
    """``treatment − baseline`` over paired runs (same seed = same real subset, same initialisation)."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float | None  # two-sided Wilcoxon signed-rank (exact for small n); None when every difference is 0
    significant: bool  # p < alpha
    test: str = "wilcoxon signed-rank, two-sided"

    def to_dict(self) -> dict:
        return asdict(self)


def paired_comparison(treatment, baseline, ci_level: float = 0.95, alpha: float = 0.05) -> PairedComparison:
    """Mean difference with a t interval over the paired differences, and the paired Wilcoxon signed-rank test
    (``scipy.stats.wilcoxon``, two-sided; with 5 pairs the smallest possible p is 0.0625, so ≥ 6 pairs are
    needed to reach p < 0.05 — reported, not hidden)."""
    from scipy import stats

    t = np.asarray(treatment, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if t.shape != b.shape or t.ndim != 1 or len(t) < 2:
        raise ValueError("paired_comparison needs two equal-length sequences of at least 2 runs")
    d = t - b
    n = len(d)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.5 + ci_level / 2, n - 1) * se) if se > 0 else 0.0
    if np.allclose(d, 0):
        p = None
    else:
        p = float(stats.wilcoxon(t, b, alternative="two-sided").pvalue)
    return PairedComparison(n, mean, mean - half, mean + half, ci_level, p, p is not None and p < alpha)


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon signed-rank p-value ``n`` pairs can give (2 / 2ⁿ)."""
    return float(2.0 / 2 ** n)


def auc_mann_whitney(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney U statistic / (n_pos n_neg) (ties count one half) — equal to
    ``sklearn.metrics.roc_auc_score``, without its per-call overhead (the bootstrap calls it thousands of times)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    n1, n0 = len(pos), len(neg)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_auc(y: np.ndarray, p: np.ndarray, replicates: int = 1000, ci_level: float = 0.95,
                  seed: int = 0) -> tuple[float | None, float | None, float | None]:
    """ROC-AUC with a percentile bootstrap CI (stratified: positives and negatives resampled separately).
    ``(None, None, None)`` when one class is missing."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pos, neg = p[y == 1], p[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None, None, None
    auc = auc_mann_whitney(pos, neg)
    if replicates <= 0:
        return auc, None, None
    rng = np.random.default_rng(seed)
    boots = np.array([auc_mann_whitney(rng.choice(pos, len(pos)), rng.choice(neg, len(neg)))
                      for _ in range(replicates)])
    lo, hi = np.quantile(boots, [0.5 - ci_level / 2, 0.5 + ci_level / 2])
    return auc, float(lo), float(hi)


def wilson_interval(k: int, n: int, ci_level: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion k / n (``(None, None)`` for n = 0)."""
    from scipy import stats

    if n <= 0:
        return None, None
    z = float(stats.norm.ppf(0.5 + ci_level / 2))
    ph = k / n
    den = 1 + z * z / n
    c = (ph + z * z / (2 * n)) / den
    h = z * np.sqrt(ph * (1 - ph) / n + z * z / (4 * n * n)) / den
    # at k = 0 / k = n the bound is exactly 0 / 1 (centre -/+ half cancel; in floats they miss by an ulp, which
    # would put the bound on the wrong side of the estimate itself)
    low = 0.0 if k == 0 else float(max(0.0, c - h))
    high = 1.0 if k == n else float(min(1.0, c + h))
    return low, high
