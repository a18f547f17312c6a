"""The shared statistics against reference computations (scikit-learn, scipy, textbook values)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st
from sklearn.metrics import roc_auc_score

from services.metrics.evaluation.stats import (auc_mann_whitney, bootstrap_auc, min_wilcoxon_p, paired_comparison,
                                               wilson_interval)


def test_auc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.round(rng.random(400) + 0.4 * y, 1)  # many ties
    assert auc_mann_whitney(p[y == 1], p[y == 0]) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_bootstrap_auc_interval_brackets_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(40), np.zeros(60)]
    p = rng.random(100) + 0.3 * y
    auc, lo, hi = bootstrap_auc(y, p, replicates=500, seed=3)
    assert lo < auc < hi and 0 <= lo and hi <= 1
    assert bootstrap_auc(y, p, replicates=500, seed=3) == (auc, lo, hi)
    assert bootstrap_auc(np.ones(5), np.ones(5)) == (None, None, None)


def test_paired_comparison_is_scipy_wilcoxon_and_a_t_interval():
    a = np.array([0.81, 0.84, 0.80, 0.86, 0.83, 0.85, 0.82])
    b = np.array([0.78, 0.80, 0.79, 0.81, 0.80, 0.79, 0.80])
    r = paired_comparison(a, b)
    assert r.p_value == pytest.approx(st.wilcoxon(a, b).pvalue)
    d = a - b
    half = st.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert (r.mean_diff, r.ci_low, r.ci_high) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    assert r.significant and r.n == 7
    assert paired_comparison(a, a).p_value is None and not paired_comparison(a, a).significant


def test_five_pairs_can_never_reach_p_below_0_05():
    assert min_wilcoxon_p(5) == pytest.approx(0.0625)
    a = np.arange(5) + 10.0
    assert paired_comparison(a, a - 1 - np.arange(5) * 0.1).p_value == pytest.approx(0.0625)
    assert min_wilcoxon_p(6) < 0.05


def test_wilson_interval_textbook_values():
    lo, hi = wilson_interval(3, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.108, 0.603)
    assert wilson_interval(0, 0) == (None, None)
    assert wilson_interval(0, 20)[0] == 0.0
    for n in range(1, 40):  # the bounds at the ends are exact: the estimate is always inside
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
