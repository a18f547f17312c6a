"""The shipped independent classifier: files (hash, size, storage), loading, prediction, and a card whose numbers
reproduce on the real patient-disjoint held-out split."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from repo_paths import SHARED_DATA

from services.common.findings import FINDINGS
from services.metrics.errors import MetricsError
from services.metrics.evaluation.classifier import model as M
from services.metrics.evaluation.classifier import train as T
from services.metrics.evaluation.inputs import DataSpec, load_real, resize

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NIH = SHARED_DATA / "nih-chestxray14-64"
KERMANY = SHARED_DATA / "kermany-pneumonia-224" / "train"


@pytest.fixture(scope="module")
def clf():
    return M.load_classifier()


@pytest.fixture(scope="module")
def meta():
    return json.loads(M.META.read_text())


@pytest.fixture(scope="module")
def nih_test():
    return load_real(DataSpec(path=str(NIH), layout="nih", split_by="patient"), 64, splits=("test",))


def test_shipped_weights_match_their_hash_and_fit_the_file_limit(meta):
    from safetensors import safe_open

    assert M.sha256_file(M.WEIGHTS) == meta["sha256"] and meta["bytes"] == M.WEIGHTS.stat().st_size
    assert M.WEIGHTS.stat().st_size <= 20_000_000
    with safe_open(str(M.WEIGHTS), "pt") as f:
        assert f.metadata()["format"] == M.FORMAT and f.metadata()["arch"] == meta["arch"] == "resnet18"
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    floats = {k: d for k, d in dtypes.items() if not k.endswith((".int8", ".scale", "num_batches_tracked"))}
    assert floats and set(floats.values()) == {"F16"}
    assert {k for k in dtypes if k.endswith(".int8")} == {k + ".int8" for k in M.INT8_KEYS}


def test_changed_or_missing_weights_are_refused(tmp_path, meta):
    w, j = tmp_path / "c.safetensors", tmp_path / "c.json"
    shutil.copy(M.WEIGHTS, w)
    shutil.copy(M.META, j)
    assert M.sha256_file(w) == meta["sha256"]
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(MetricsError, match="sha256"):
        M.load_classifier(w, j)
    with pytest.raises(MetricsError, match="missing"):
        M.load_classifier(tmp_path / "gone.safetensors", j)


def test_card_gives_auc_with_ci_and_counts_per_finding_and_test_set(clf, meta):
    nih, ker = clf.card[T.NIH_NAME], clf.card[T.KERMANY_NAME]
    assert set(nih) == set(FINDINGS) and set(ker) == {"lung_opacity"}  # Kermany: pneumonia only
    card_md = (M.HERE / f"{M.NAME}.md").read_text()
    for name, entries in clf.card.items():
        for f, m in entries.items():
            assert m["ci_low"] <= m["auc"] <= m["ci_high"] and m["ci_level"] == 0.95, (name, f)
            assert m["n_pos"] > 0 and m["n_neg"] > 0
            assert m["better_than_chance"] == (m["ci_low"] > 0.5)
            assert f"| {name} | {f} | {m['auc']:.3f} | [{m['ci_low']:.3f}, {m['ci_high']:.3f}] |" in card_md
    assert meta["sha256"] in card_md and "## Limitations" in card_md
    assert T.render_card(meta) == card_md  # the card is the json, rendered
    assert all(0 < t < 1 for t in clf.thresholds.values()) and set(clf.reference) == set(FINDINGS)


def test_card_counts_are_the_patient_test_splits_and_disjoint_from_training(clf, meta):
    from services.common.datasets import load_records

    for name, root, layout in ((T.NIH_NAME, NIH, "nih"), (T.KERMANY_NAME, KERMANY, "folder")):
        tr = load_records(root, layout, views="all", split="train", split_by="patient")
        te = load_records(root, layout, views="all", split="test", split_by="patient")
        assert not {M_key(r) for r in tr} & {M_key(r) for r in te}  # no patient on both sides
        codes = np.stack([np.asarray(r.codes) for r in te])
        d = next(x for x in meta["training_data"] if x["name"] == name)
        assert (d["n_train"], d["n_test"]) == (len(tr), len(te)) == (len(tr), meta["heldout"][name]["n"])
        for f, m in clf.card[name].items():
            j = FINDINGS.index(f)
            assert (m["n_pos"], m["n_neg"]) == (int((codes[:, j] == 1).sum()), int((codes[:, j] == 0).sum()))


def M_key(record) -> str:
    from services.common.datasets.splits import patient_key

    return patient_key(record)


def test_card_auc_reproduces_on_the_real_heldout_split(clf, nih_test):
    from sklearn.metrics import roc_auc_score

    p = clf.predict(nih_test.test_images)
    for f, m in clf.card[T.NIH_NAME].items():
        j = FINDINGS.index(f)
        assert roc_auc_score(nih_test.test_codes[:, j], p[:, j]) == pytest.approx(m["auc"], abs=1e-3), f


def test_predict_resizes_takes_rgb_and_checks_shapes(clf, nih_test):
    x = nih_test.test_images[:6]
    p = clf.predict(x)
    assert p.shape == (6, 4) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    big = resize(x, 128)
    assert np.allclose(clf.predict(big), clf.predict(resize(big, 64)), atol=1e-6)  # resized to 64 px inside
    assert np.allclose(clf.predict(np.repeat(x[..., None], 3, -1)), p, atol=1e-6)
    assert clf.predict(np.zeros((0, 64, 64))).shape == (0, 4)
    with pytest.raises(MetricsError, match="shape"):
        clf.predict(np.zeros((64, 64)))
    assert M.load_classifier() is clf  # cached per file and hash


def test_provenance_names_the_arch_hash_and_data(clf, meta):
    prov = clf.provenance()
    assert prov["arch"] == "resnet18" and prov["weights_sha256"] == meta["sha256"]
    assert prov["training_data"] == [T.NIH_NAME, T.KERMANY_NAME] and "patient" in prov["split_rule"]


def test_int8_kernels_round_trip_within_one_step_per_channel():
    g = torch.Generator().manual_seed(0)
    sd = {M.INT8_KEYS[0]: torch.randn(8, 4, 3, 3, generator=g), "head.weight": torch.randn(4, 8, generator=g),
          "bn.num_batches_tracked": torch.tensor(3)}
    enc = M.encode_state(sd)
    assert enc[M.INT8_KEYS[0] + ".int8"].dtype == torch.int8 and enc["head.weight"].dtype == torch.float16
    dec = M.decode_state(enc)
    step = sd[M.INT8_KEYS[0]].abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    assert ((dec[M.INT8_KEYS[0]] - sd[M.INT8_KEYS[0]]).abs() <= step / 2 + 1e-6).all()
    assert torch.allclose(dec["head.weight"], sd["head.weight"], atol=2e-3) and int(dec["bn.num_batches_tracked"]) == 3


def test_trainer_pieces_have_known_answers():
    # augmentation: shifts ≤ 4 px, no flips (a bright left half stays left), values stay in [0, 1]
    x = torch.zeros(16, 1, 32, 32)
    x[..., :12] = 1.0
    out = T.augment(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert (out[..., :8].mean((1, 2, 3)) > out[..., -8:].mean((1, 2, 3))).all()
    assert torch.equal(out, T.augment(x, torch.Generator().manual_seed(1)))
    # pos_weight = negatives / positives of the sampling mixture, unknowns (2) ignored
    a = np.array([[1, 0, 2, 0], [0, 0, 2, 0]])
    b = np.array([[2, 1, 0, 0], [2, 1, 0, 0]])
    pw = T.pos_weights([a, b], [0.5, 0.5])
    assert pw[0] == pytest.approx(1.0) and pw[1] == pytest.approx(1.0) and pw[2] == pw[3] == 20.0
    assert T.pos_weights([a, b], [0.8, 0.2])[1] == pytest.approx(0.8 / 0.2)
    # Youden's J picks the threshold that separates two clean groups
    y, p = np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert 0.3 < T.youden(y, p) <= 0.7 and T.youden(np.zeros(3), p[:3]) == 0.5
