"""Measures against reference implementations on the same features: pytorch-fid (FD), torch-fidelity (KID,
precision/recall), the NVlabs / clovaai formulas written out here (IPR, density/coverage)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from services.metrics.cache import RunningStats
from services.metrics.errors import MetricsError
from services.metrics.measures import fid as F
from services.metrics.measures.kid import kid
from services.metrics.measures.ipr import bootstrap_precision_recall, improved_precision_recall
from services.metrics.measures.prdc import density_coverage


def _feats(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mix * scale + shift).astype(np.float64)


# ------------------------------------------------------------------------------------------ Fréchet distance
def test_fd_equals_pytorch_fid_to_1e6_relative():
    fs = pytest.importorskip("pytorch_fid.fid_score")
    a, b = _feats(600, 64, 0), _feats(500, 64, 1, shift=0.3, scale=1.2)
    s1, s2 = F.GaussianStats.from_features(a), F.GaussianStats.from_features(b)
    ours = F.frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
    ref = fs.calculate_frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert F.frechet_distance_features(a, b) == pytest.approx(ref, rel=1e-6)
    # np.cov convention (n - 1) as pytorch-fid uses
    assert np.allclose(s1.sigma, np.cov(a, rowvar=False))


def test_fd_small_sets_gram_route_equals_eigen_route_and_pytorch_fid():
    fs = pytest.importorskip("pytorch_fid.fid_score")
    a, b = _feats(40, 96, 2), _feats(50, 96, 3, shift=0.2)  # n < d: rank-deficient covariances
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = F.frechet_distance_features(a, b, method="gram")
        e = F.frechet_distance_features(a, b, method="eig")
        ref = fs.calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert g == pytest.approx(e, rel=1e-7)
    assert g == pytest.approx(ref, rel=1e-5)  # sqrtm of a singular product is itself only ~1e-6 accurate


def test_fd_identical_sets_is_zero_and_symmetric():
    a, b = _feats(300, 32, 4), _feats(300, 32, 5, shift=0.5)
    assert abs(F.frechet_distance_features(a, a)) < 1e-8
    assert F.frechet_distance_features(a, b) == pytest.approx(F.frechet_distance_features(b, a), rel=1e-9)


def test_fd_no_imaginary_failure_on_near_singular_covariances():
    rng = np.random.default_rng(6)
    d = 64
    low = rng.normal(size=(2000, 3)) @ rng.normal(size=(3, d))  # rank-3 covariance
    a = low + 1e-9 * rng.normal(size=low.shape)
    b = low * 1.1 + 0.1
    v = F.frechet_distance_features(a, b, method="eig")
    assert np.isfinite(v) and v >= 0


def test_fd_sample_size_policy():
    a = _feats(10, 16, 7)
    with pytest.raises(MetricsError, match="too few images"):
        F.frechet_distance_features(a[:1], a)
    with pytest.warns(F.SampleSizeWarning, match="rank-deficient"):
        F.frechet_distance_features(a, _feats(12, 16, 8))
    with pytest.raises(MetricsError, match="dimensions differ"):
        F.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fd_bootstrap_interval_brackets_estimate():
    a, b = _feats(120, 16, 9), _feats(100, 16, 10, shift=0.4)
    point = F.frechet_distance_features(a, b)
    lo, hi, reps = F.bootstrap_fd(a, b, n_boot=60, seed=1)
    assert lo < point < hi and len(reps) == 60
    lo2, hi2, _ = F.bootstrap_fd(a[:, :8].repeat(3, 1)[:, :20], b[:, :8].repeat(3, 1)[:, :20], n_boot=5)  # gram path
    assert lo2 <= hi2


def test_running_stats_merge_equals_full_stats():
    x = _feats(257, 12, 11)
    parts = [RunningStats.from_features(x[i : i + 50]) for i in range(0, len(x), 50)]
    merged = RunningStats.empty(12)
    for p in parts:
        merged = merged.merge(p)
    inc = RunningStats.empty(12)
    for i in range(0, len(x), 33):
        inc.update(x[i : i + 33])
    for st in (merged, inc):
        assert st.n == 257
        assert np.allclose(st.mean, x.mean(0), rtol=0, atol=1e-12)
        assert np.allclose(st.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------ KID
def test_kid_equals_torch_fidelity():
    torch = pytest.importorskip("torch")
    mk = pytest.importorskip("torch_fidelity.metric_kid")
    a, b = _feats(150, 32, 12), _feats(130, 32, 13, shift=0.2)
    ours = kid(a, b, subsets=20, subset_size=100, seed=123)
    ref = mk.kid_features_to_metric(
        torch.from_numpy(a), torch.from_numpy(b), kid_subsets=20, kid_subset_size=100, rng_seed=123, verbose=False,
        kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
    )
    assert ours[0] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-10)
    assert ours[1] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-10)


def test_kid_is_near_zero_for_same_distribution_and_positive_otherwise():
    a, b, c = _feats(400, 16, 14), _feats(400, 16, 15), _feats(400, 16, 16, shift=1.0)
    same, _ = kid(a, b, subsets=10, subset_size=200)
    diff, _ = kid(a, c, subsets=10, subset_size=200)
    assert abs(same) < 0.2 * diff and diff > 0
    with pytest.raises(MetricsError, match="too few"):
        kid(a[:1], b)


# ------------------------------------------------------------------------------------------ IPR / PRDC
def _nvlabs_ipr(real, fake, k):
    """Kynkäänniemi et al. 2019 as in NVlabs/stylegan2-ada metrics/precision_recall.py (dist ≤ radius)."""
    def d(a, b):
        return np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0))

    rr = np.sort(d(real, real), axis=1)[:, k]
    rf = np.sort(d(fake, fake), axis=1)[:, k]
    precision = (d(fake, real) <= rr[None]).any(1).mean()
    recall = (d(real, fake) <= rf[None]).any(1).mean()
    return precision, recall


def _clovaai_prdc(real, fake, k):
    """Naeem et al. 2020 as in clovaai/generative-evaluation-prdc (strict <)."""
    def d(a, b):
        return np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0))

    r = np.partition(d(real, real), k, axis=1)[:, k]
    drf = d(real, fake)
    density = (1.0 / k) * (drf < r[:, None]).sum(0).mean()
    coverage = (drf.min(1) < r).mean()
    return density, coverage


def test_ipr_equals_nvlabs_formula_and_torch_fidelity():
    torch = pytest.importorskip("torch")
    prc = pytest.importorskip("torch_fidelity.metric_prc")
    real, fake = _feats(300, 24, 17), _feats(260, 24, 18, shift=0.3, scale=0.8)
    p, r = improved_precision_recall(real, fake, k=3, batch_size=37)  # odd batch: exercises the batching
    assert (p, r) == pytest.approx(_nvlabs_ipr(real, fake, 3), abs=0)
    tp, tr = prc.calculate_precision_recall_full(torch.from_numpy(fake), torch.from_numpy(real), 3, 10000)
    assert p == pytest.approx(tp, abs=1e-6) and r == pytest.approx(tr, abs=1e-6)  # its mean is float32; counts equal
    assert 0 < p < 1 and 0 < r < 1


def test_density_coverage_equals_clovaai_formula():
    real, fake = _feats(250, 20, 19), _feats(230, 20, 20, shift=0.25)
    dens, cov = density_coverage(real, fake, k=5, batch_size=29)
    rd, rc = _clovaai_prdc(real, fake, 5)
    assert dens == pytest.approx(rd, abs=1e-12) and cov == pytest.approx(rc, abs=1e-12)
    same_d, same_c = density_coverage(real, real, k=5)
    assert same_c == 1.0 and same_d > 0.9


def test_ipr_bootstrap_and_too_few():
    real, fake = _feats(80, 8, 21), _feats(70, 8, 22, shift=0.3)
    p, r = improved_precision_recall(real, fake)
    ci = bootstrap_precision_recall(real, fake, n_boot=30, seed=3)
    assert ci["precision"][0] <= p <= ci["precision"][1]
    assert ci["recall"][0] <= r <= ci["recall"][1]
    with pytest.raises(MetricsError, match="k-NN"):
        improved_precision_recall(real[:3], fake)


# ------------------------------------------------------------------------------------------ spatial etc.
def test_spatial_features_behave():
    from scipy.ndimage import gaussian_filter

    from services.metrics.measures.spatial import SPATIAL_FEATURES, compare_spatial, image_features

    rng = np.random.default_rng(23)
    sharp = rng.random((64, 64)).astype(np.float32)
    blurred = gaussian_filter(sharp, 2).astype(np.float32)
    fs, fb = image_features(sharp), image_features(blurred)
    idx = {n: i for i, n in enumerate(SPATIAL_FEATURES)}
    for n in ("brenner", "tenengrad", "laplacian_var", "glcm_contrast", "glcm_entropy"):
        assert fs[idx[n]] > fb[idx[n]], n
    assert fs[idx["glcm_idm"]] < fb[idx["glcm_idm"]]
    flat = image_features(np.full((32, 32), 0.5, np.float32))
    assert flat[idx["glcm_asm"]] == pytest.approx(1.0) and flat[idx["brenner"]] == 0
    colour = np.stack([sharp, sharp * 0.2, 1 - sharp], axis=2)
    assert image_features(colour)[idx["colourfulness"]] > 10 and fs[idx["colourfulness"]] == 0
    real = np.stack([image_features(rng.random((32, 32))) for _ in range(30)])
    synth = np.stack([image_features(gaussian_filter(rng.random((32, 32)), 1.5)) for _ in range(30)])
    rows = {r["feature"]: r for r in compare_spatial(real, synth)}
    assert rows["brenner"]["ks_pvalue"] < 1e-6 and rows["brenner"]["real_mean"] > rows["brenner"]["synthetic_mean"]
    assert rows["colourfulness"]["ks_pvalue"] == 1.0


def test_svm_separability():
    from services.metrics.measures.svm import svm_separability

    rng = np.random.default_rng(24)
    a = rng.normal(size=(200, 6))
    easy = svm_separability(a, rng.normal(size=(200, 6)) + 3.0)
    hard = svm_separability(a, rng.normal(size=(200, 6)))
    assert easy["linear"]["f1"] > 0.95 and easy["rbf"]["f1"] > 0.95
    assert hard["f1_best"] < 0.75
    assert easy["n_train"] == 40 and easy["n_validation"] == 360
    with pytest.raises(MetricsError, match="too few images"):
        svm_separability(a[:20], a[:20] + 1)


def test_variety_collapsed_set_compresses_worse():
    from services.metrics.measures.variety import MeanImages, variety

    rng = np.random.default_rng(25)
    varied, collapsed = MeanImages(), MeanImages()
    one = rng.random((48, 48))
    for i in range(50):
        varied.add(rng.random((48, 48)), "a")
        collapsed.add(one + 0.01 * rng.random((48, 48)), "a")
    v = variety(varied.means(), varied.counts)
    c = variety(collapsed.means(), collapsed.counts)
    assert c["a"]["png_bytes"] > v["a"]["png_bytes"]
    assert set(v) == {"a", "all"} and v["a"]["n"] == 50
