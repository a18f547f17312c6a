"""Shipped reference sets and the second extractor (cxr-encoder)."""

from __future__ import annotations

import numpy as np
import pytest
from repo_paths import SHARED_DATA

from services.metrics.errors import MetricsError
from services.metrics.references import BUILTIN, get_reference, list_references

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_shipped_nih_reference_is_complete():
    assert BUILTIN["nih-cxr64"].is_file(), "services/metrics/references/nih-cxr64-valid.npz must ship"
    assert BUILTIN["nih-cxr64"].stat().st_size < 5_000_000
    assert "nih-cxr64" in list_references()
    ref = get_reference("nih-cxr64")
    d = ref.data
    assert d.n == 200
    assert d.features["inception"].shape == (200, 2048) and d.features["inception"].dtype == np.float32
    assert d.features["cxr-encoder"].shape == (200, 128)
    assert d.stats["inception"].mean.dtype == np.float64
    assert d.spatial.shape == (200, 8) and len(d.labels) == 200
    assert set(d.means) >= {"0_normal", "1_abnormal", "all"} and d.means["all"].shape == (64, 64)
    assert d.samples.shape[0] == 16
    st = d.stamps["inception"]
    assert st.weights_file_sha256 == "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
    assert st.weights_sha256 == "5b79bf1ba01d239d121efbb15ac7a045b5478c99dfb1d940df6d427fa63307c6"  # the tensors
    assert st.preprocessing["size"] == 299 and st.preprocessing["resize"] == "bilinear"


def test_shipped_stamp_matches_current_extractor():
    """If this fails the shipped features are stale: rebuild with services.metrics.build_references."""
    from services.metrics.extractors import get_extractor
    from services.metrics.extractors.inception import default_weights_path

    ref = get_reference("nih-cxr64")
    assert ref.data.stamps["cxr-encoder"].key() == get_extractor("cxr-encoder").stamp.key()
    if default_weights_path() is None:
        pytest.skip("FID weights not installed")
    assert ref.data.stamps["inception"].key() == get_extractor("inception").stamp.key()


def test_shipped_features_reproduce_from_images():
    """The shipped cxr-encoder features equal a fresh extraction of the same NIH images (first 8)."""
    from services.metrics.extractors import get_extractor
    from services.metrics.sources import FolderSource

    root = SHARED_DATA / "nih-chestxray14-64" / "valid"
    if not root.is_dir():
        pytest.skip("shared data not found")
    src = FolderSource(root, limit=8)
    feats = get_extractor("cxr-encoder").extract(src.images())
    assert np.allclose(feats, get_reference("nih-cxr64").data.features["cxr-encoder"][:8], rtol=1e-4, atol=1e-4)


def test_score_against_default_reference_with_cxr_encoder(tmp_path):
    """Scores from the second extractor are named FD_cxr-encoder and computed only for the new images."""
    from PIL import Image

    from services.metrics.api import score

    root = SHARED_DATA / "nih-chestxray14-64" / "train"
    files = sorted(root.rglob("*.png"))[:40]
    if not files:
        pytest.skip("shared data not found")
    for f in files:
        Image.open(f).save(tmp_path / f.name)
    res = score("nih-cxr64", tmp_path, "fid,kid,ipr,prdc", extractor="cxr-encoder", bootstrap=10,
                kid_subset_size=40, kid_subsets=5, cache=False)
    names = res.values()
    assert "FD_cxr-encoder" in names and "KID_cxr-encoder" in names and "FID" not in names
    assert res.real.computed_images == 0 and res.synthetic.computed_images == 40
    assert res.stamps["cxr-encoder"]["preprocessing"]["size"] == 64
    # real NIH train vs valid: same distribution → KID small relative to a clearly different set
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(noise / f"{i}.png")
    res_noise = score("nih-cxr64", noise, "fid", extractor="cxr-encoder", bootstrap=0, cache=False)
    assert res_noise.get("fid").value > 5 * res.get("fid").value


def test_reference_without_images_refuses_image_metrics(tmp_path):
    from services.metrics.api import score
    from services.metrics.references import register_reference, unregister_reference

    rng = np.random.default_rng(1)
    register_reference("feat-only", rng.normal(size=(50, 128)).astype(np.float32), extractors=("cxr-encoder",), persist=False)
    try:
        with pytest.raises(MetricsError, match="no spatial features"):
            score("feat-only", str(tmp_path), "spatial", cache=False)
    finally:
        unregister_reference("feat-only")
