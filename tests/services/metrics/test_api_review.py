"""Review fixes of the metrics core: one image reader (the shared codec), stored-batch folders, bootstrap CIs
clipped and bracketing the estimate, KID subset size for small sets, undefined spatial rows omitted, corrupt
inputs found before any feature extraction."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.metrics.cache import FeatureCache
from services.metrics.errors import MetricsError
from metrics_fakes import registered_counting_extractor


CountingExtractor, counting_extractor = registered_counting_extractor("review-counting", batch_size=4)


@pytest.fixture
def cache(tmp_path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache")


def _img(rng, n=32) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] / n
    img = 0.5 + 0.3 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy) + 0.15 * rng.random((n, n))
    return np.clip(img, 0, 1).astype(np.float32)


def _write_folder(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray((_img(rng) * 255).astype(np.uint8)).save(root / f"{i:03d}.png")
    return root


# ----------------------------------------------------------------------------- 1. one reader: the shared codec
def test_read_image_uses_the_codec_for_dicom(tmp_path):
    from services.common.codecs import read_image_file
    from services.common.codecs.dicom import encode_dicom
    from services.metrics.sources import read_image

    rng = np.random.default_rng(0)
    img = (0.2 + 0.4 * rng.random((24, 24))).astype(np.float32)  # a narrow range: no stretch to [0, 1]
    p = tmp_path / "x.dcm"
    p.write_bytes(encode_dicom(img, None))
    got = read_image(p)
    np.testing.assert_array_equal(got, read_image_file(p))
    assert got.min() > 0.15 and got.max() < 0.65
    # a 16-bit PNG: the codec's full-scale /65535, not a guess from the maximum
    p16 = tmp_path / "y.png"
    Image.fromarray((img * 200).astype(np.uint16)).save(p16)
    np.testing.assert_array_equal(read_image(p16), read_image_file(p16))


def test_read_image_errors_name_the_file_and_keep_colour(tmp_path):
    from services.metrics.sources import read_image

    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"not a dicom at all" * 10)
    with pytest.raises(MetricsError, match="cannot read image .*broken.dcm"):
        read_image(bad)
    rng = np.random.default_rng(1)
    rgb = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png").shape == (16, 16, 3)  # colour kept for colourfulness
    Image.fromarray(np.repeat(rgb[:, :, :1], 3, axis=2)).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (16, 16)  # equal channels → greyscale


# ----------------------------------------------------------------------------- 2. stored batch folders
@pytest.mark.parametrize("fmt", ["npz", "webdataset"])
def test_stored_batch_folder_as_synthetic_any_format(tmp_path, cache, fmt):
    from click.testing import CliRunner

    from services.common.findings import Condition
    from services.common.store import BATCH_FORMATS, BatchStore
    from services.metrics.api import score
    from synthrad.cli.score_cmd import command

    if fmt not in BATCH_FORMATS:
        pytest.skip(f"store has no {fmt} format")
    store = BatchStore(tmp_path / "store")
    rng = np.random.default_rng(2)
    with store.create("fake-model", "0" * 16, "eager", fmt) as w:
        for i in range(10):
            w.add(_img(rng), seed=i, condition=Condition.no_finding())
    batch_id = store.list()[0].batch_id
    folder = store.batch_path(batch_id)
    real = _write_folder(tmp_path / "real", 10, 3)
    res = score(real, folder, "fid", extractor="review-counting", bootstrap=0, cache=cache)
    assert res.synthetic.kind == "batch" and res.synthetic.n == 10
    r = CliRunner().invoke(command, ["--real", str(real), "--synthetic", folder, "--metrics", "fid",
                                     "--extractor", "review-counting", "--bootstrap", "0", "--no-cache", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "FD_review-counting" in r.output and "batch " + batch_id in r.output


# ----------------------------------------------------------------------------- 3. bootstrap CIs
def test_centred_interval_is_clipped_and_brackets_the_estimate():
    from services.metrics.measures.fid import centred_interval

    # recall 0 in all but one replicate: the mean exceeds the upper quantile → basic interval [0, -0.0002]
    reps = np.r_[np.zeros(99), 0.02]
    lo, hi = centred_interval(0.0, reps, 0.95, bounds=(0.0, 1.0))
    assert 0.0 <= lo <= 0.0 <= hi <= 1.0
    # the mirror case near 1 (lower bound above the estimate / above 1 before clipping)
    lo, hi = centred_interval(1.0, np.r_[np.ones(99), 0.9], 0.95, bounds=(0.0, 1.0))
    assert 0.0 <= lo <= 1.0 <= hi <= 1.0


def test_bootstrap_cis_stay_in_range():
    from services.metrics.measures.fid import bootstrap_fd
    from services.metrics.measures.ipr import bootstrap_precision_recall

    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 8))
    lo, hi, _ = bootstrap_fd(x, x.copy(), n_boot=30, seed=0)  # FID ≈ 0: the basic interval dips below 0
    assert 0.0 <= lo <= hi
    far = rng.normal(size=(40, 8)) + 50.0  # disjoint sets: precision = recall = 0
    ci = bootstrap_precision_recall(x, far, n_boot=20, seed=0, point=(0.0, 0.0))
    for lo, hi in ci.values():
        assert 0.0 <= lo <= 0.0 <= hi <= 1.0
    # intervals are centred on the point given (the score's own estimate)
    ci = bootstrap_precision_recall(x, x + 0.01, n_boot=20, seed=0, point=(0.97, 0.96))
    assert ci["precision"][0] <= 0.97 <= ci["precision"][1] and ci["recall"][0] <= 0.96 <= ci["recall"][1]


# ----------------------------------------------------------------------------- 4. KID subset size
def test_kid_subset_size_below_n_with_warning():
    from services.metrics.measures.kid import KIDSubsetWarning, choose_subset_size, kid

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(100, 8)), rng.normal(size=(100, 8)) + 0.3
    with pytest.warns(KIDSubsetWarning, match="50"):
        _, std = kid(a, b, subsets=10, subset_size=1000)
    assert std > 0  # subsets differ
    assert choose_subset_size(100, 300, 1000)[0] == 50
    assert choose_subset_size(2000, 3000, 1000) == (1000, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kid(a, b, subsets=3, subset_size=99)  # a size below n: no warning


def test_kid_in_score_result_warns_and_varies():
    from services.metrics.api import score

    rng = np.random.default_rng(6)
    fr, fs = rng.normal(size=(100, 8)), rng.normal(size=(100, 8)) + 0.3
    res = score(fr, fs, "kid", extractor="review-counting", cache=False, kid_subsets=10)
    k = res.get("kid")
    assert k.params["subset_size"] < 100 and k.std > 0
    assert any("KID" in w and "subset" in w for w in res.warnings)


# ----------------------------------------------------------------------------- 5. undefined spatial rows
def test_colourfulness_omitted_for_greyscale_sets(tmp_path, cache):
    from click.testing import CliRunner

    from services.metrics.api import score
    from services.metrics.report import render_html
    from synthrad.cli.score_cmd import command

    real = _write_folder(tmp_path / "real", 12, 7)
    synth = _write_folder(tmp_path / "synth", 12, 8)
    res = score(real, synth, "spatial", cache=cache)
    feats = [r["feature"] for r in res.spatial]
    assert "colourfulness" not in feats and "brenner" in feats
    assert "colourfulness" in res.spatial_omitted
    html = render_html(res)
    assert "<td class=\"\">colourfulness</td>" not in html and "greyscale" in html
    r = CliRunner().invoke(command, ["--real", str(real), "--synthetic", str(synth), "--metrics", "spatial",
                                     "--no-cache", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "colourfulness" not in [line.split()[0] for line in r.output.splitlines() if line.startswith("    ") and line.split()]
    # a colour set keeps the row
    rng = np.random.default_rng(9)
    colour = rng.random((12, 32, 32, 3)).astype(np.float32)
    res = score(real, colour, "spatial", cache=False)
    assert "colourfulness" in [r["feature"] for r in res.spatial]


# ----------------------------------------------------------------------------- 6. corrupt inputs first
def test_corrupt_image_fails_before_extraction(tmp_path, cache):
    from services.metrics.api import score

    real = _write_folder(tmp_path / "real", 12, 10)
    synth = _write_folder(tmp_path / "synth", 12, 11)
    (synth / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # sorted last
    with pytest.raises(MetricsError, match="cannot read image .*zz_corrupt.png"):
        score(real, synth, "fid", extractor="review-counting", bootstrap=0, cache=cache)
    assert CountingExtractor.calls == 0  # both sets are checked before any image reaches the extractor
    CountingExtractor.calls = 0
    with pytest.raises(MetricsError, match="zz_corrupt.png"):
        score(synth, real, "fid", extractor="review-counting", bootstrap=0, cache=False)
    assert CountingExtractor.calls == 0
