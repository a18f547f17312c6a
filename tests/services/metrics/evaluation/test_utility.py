"""Utility on constructed cases: a "synthetic" set of real Kermany images labelled as the other class must lose
utility; more real images with their right labels must not; the same seeds give the same numbers."""

from __future__ import annotations

import base64
import shutil

import numpy as np
import pytest
import torch
from repo_paths import NIH64, SHARED_DATA

from services.common.codecs.files import read_image_file
from services.common.datasets.preprocess import resize_center_crop
from services.common.findings import FINDINGS
from services.metrics.errors import MetricsError
from services.metrics.evaluation import evaluate
from services.metrics.evaluation.inputs import SyntheticSet
from services.metrics.evaluation.registry import get_evaluation, parse_options
from services.metrics.evaluation import utility_training
from services.metrics.evaluation.utility_training import task_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KERMANY = SHARED_DATA / "kermany-pneumonia-224" / "train"
J = FINDINGS.index("lung_opacity")
PNEUMONIA, NORMAL = np.array([2, 1, 2, 2], np.int8), np.zeros(4, np.int8)
# tiny: 32 px, 30 real training images per seed (+ 90 synthetic at ratio 3), 20 epochs, 6 seeds (p < 0.05 reachable)
FAST = {"resolution": 32, "real_train": 30, "epochs": 20, "batch": 30, "seeds": 6, "threads": 1}


class TinyClassifier(torch.nn.Module):
    """networks.Classifier's interface (backbone + head, ``features``) on a 3-layer CNN: the statistical cases
    train 60-odd classifiers, too many for MobileNetV3 inside a test's time (the determinism and NIH cases keep it)."""

    def __init__(self, arch: str, num_outputs: int):
        super().__init__()
        nn = torch.nn
        layers, c = [], 1
        for width in (8, 16, 32):
            layers += [nn.Conv2d(c, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
        self.arch, self.num_features = arch, c
        self.backbone = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, num_outputs)

    def features(self, x):
        return self.backbone((x - 0.5) / 0.25)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def tiny_net():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utility_training, "build_classifier", TinyClassifier)
        yield


@pytest.fixture(scope="module")
def kermany(tmp_path_factory):
    """A Kermany-like folder of 250 normal + 250 pneumonia real images (split by patient), and 60 + 60 more
    images of other files as arrays for the "synthetic" sets."""
    root = tmp_path_factory.mktemp("kermany-mini")
    extra = {}
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((KERMANY / cls).glob("*.jpeg"))
        (root / "train" / cls).mkdir(parents=True)
        for f in files[:250]:
            shutil.copy(f, root / "train" / cls / f.name)
        extra[cls] = np.stack([resize_center_crop(read_image_file(f), 64) for f in files[-60:]]) / np.float32(255)
    return {"data": {"path": str(root), "layout": "folder", "split_by": "patient"}, **extra}


def _syn(kermany, flip: bool) -> SyntheticSet:
    images = np.concatenate([kermany["NORMAL"], kermany["PNEUMONIA"]])
    normal_codes, pneumonia_codes = (PNEUMONIA, NORMAL) if flip else (NORMAL, PNEUMONIA)
    codes = np.stack([normal_codes] * 60 + [pneumonia_codes] * 60)
    return SyntheticSet(images, codes, description="flipped real" if flip else "more real")


@pytest.fixture(scope="module")
def flipped(kermany, tiny_net):
    return evaluate("utility", _syn(kermany, flip=True), {"data": kermany["data"], "ratios": [3.0],
                                                          "protocols": ["augmentation", "tstr"], **FAST})


@pytest.fixture(scope="module")
def right(kermany, tiny_net):
    steps = []
    res = evaluate("utility", _syn(kermany, flip=False), {"data": kermany["data"], "ratios": [3.0], **FAST},
                   progress=lambda d, t, s: steps.append((d, t, s)))
    return res, steps


def test_real_images_of_the_other_class_lose_utility(flipped):
    h, c = flipped.headline, flipped.details["comparisons"]
    assert h["task"] == "pneumonia" and h["metric"] == "accuracy"
    assert h["augmentation_x3_delta"] < 0 and c["augmentation_x3"]["ci_high"] < 0
    per = flipped.details["per_seed"]
    assert sum(a < b for a, b in zip(per["augmentation_x3"], per["real"])) >= 5  # paired: nearly every seed loses
    # trained on flipped labels only, the classifier is worse than chance on the real test split
    assert h["tstr_delta"] < -0.2 and np.mean(per["tstr"]) < 0.5
    assert c["tstr"]["significant"] and c["tstr"]["p_value"] == pytest.approx(2 / 2 ** 6)


def test_more_real_images_with_right_labels_do_not_lose_utility(right):
    res, _ = right
    h = res.headline
    assert h["augmentation_x3_delta"] >= 0
    assert abs(h["tstr_delta"]) < 0.1  # as many other real images: close to real
    assert abs(h["feature_extraction_delta"]) < 0.1
    assert h["real_only"] > 0.65  # the tiny classifier does learn the task (the majority class is ~0.54)


def test_result_reports_every_protocol_with_provenance(right):
    res, steps = right
    main, per_seed = res.tables
    assert [r[0] for r in main.rows] == ["augmentation", "tstr", "feature_extraction"]
    assert main.columns[7:12] == ["mean Δ", "CI low", "CI high", "Wilcoxon p", "p < 0.05"]
    assert [r[0] for r in per_seed.rows] == res.provenance.seeds == list(range(6))
    for row in main.rows:
        assert row[8] <= row[7] <= row[9]  # CI around the mean difference
    fe = res.details["comparisons"]["feature_extraction"]
    assert fe["n"] == 6 and fe["test"].startswith("wilcoxon")
    sizes = res.provenance.set_sizes
    assert sizes["real_train"] == 30 and sizes["synthetic_added_x3"] == 90
    assert sizes["synthetic_only_train"] == 30 and sizes["real_head_fit"] == 15
    assert sizes["real_test"] > 50 and sizes["synthetic_usable"] == 120
    clf = res.provenance.classifier
    assert clf["arch"] == "mobilenet_v3_small" and clf["epochs"] == 20 and clf["batch"] == 30 and clf["lr"] > 0
    assert "AdamW" in clf["optimizer"]
    assert res.provenance.data["split_by"] == "patient" and res.provenance.data["task"] == "pneumonia"
    assert any("resized from 64 to 32" in w for w in res.warnings)
    png = base64.b64decode(res.figures[0].png_base64)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # one progress step per trained classifier (+ loading): 6 seeds × (real, +syn, syn-only, 2 heads)
    assert [d for d, _, _ in steps] == list(range(1, 32)) and {t for _, t, _ in steps} == {31}


def test_same_seeds_same_numbers(kermany):
    opts = {"data": kermany["data"], "ratios": [0.5], "protocols": ["augmentation", "feature_extraction"],
            **FAST, "seeds": 2, "epochs": 1, "real_train": 40}
    a = evaluate("utility", _syn(kermany, flip=False), opts)
    b = evaluate("utility", _syn(kermany, flip=False), opts)
    assert a.details["per_seed"] == b.details["per_seed"]
    assert any("0.5: p < 0.05 cannot be reached" in w for w in a.warnings)
    c = evaluate("utility", _syn(kermany, flip=False), {**opts, "seed": 5})
    assert c.provenance.seeds == [5, 6] and c.details["per_seed"] != a.details["per_seed"]


def test_findings_task_on_nih_masks_unspecified():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2, (60, 4)).astype(np.int8)
    codes[5:30, J] = 2  # lung opacity unspecified: masked for that finding only
    codes[:5] = 2  # nothing specified: dropped
    syn = SyntheticSet(rng.random((60, 64, 64), dtype=np.float32), codes, description="noise")
    res = evaluate("utility", syn, {"data": {"path": str(NIH64), "layout": "nih"}, "protocols": ["tstr"],
                                    **FAST, "seeds": 2, "epochs": 1, "real_train": 40, "crop_border": 0.1})
    assert res.headline["task"] == "findings" and res.headline["metric"] == "mean ROC-AUC"
    assert res.provenance.data["evaluated_findings"] == list(FINDINGS) and res.provenance.data["crop_border"] == 0.1
    assert set(res.details["per_finding"]["tstr"][0]) == set(FINDINGS)
    assert res.provenance.set_sizes["synthetic_usable"] == 55
    assert any("5 of 60 synthetic images dropped" in w for w in res.warnings)
    assert "augmentation_x0.5_delta" not in res.headline and "tstr_delta" in res.headline


def test_task_labels():
    codes = np.array([[0, 0, 0, 0], [2, 1, 2, 2], [1, 0, 0, 0], [2, 2, 2, 2]], np.int8)
    keep, y, m = task_labels(codes, "pneumonia")
    assert keep.tolist() == [True, True, False, False] and y[:, 0].tolist() == [0, 1] and m.all()
    keep, y, m = task_labels(codes, "findings")
    assert keep.tolist() == [True, True, True, False]
    assert m[1].tolist() == [0, 1, 0, 0] and y[2].tolist() == [1, 0, 0, 0]


@pytest.mark.parametrize("bad,field", [
    ({"ratios": [-1.0]}, "ratios"), ({"ratios": []}, "ratios"), ({"seeds": 1}, "seeds"),
    ({"arch": "vgg16"}, "arch"), ({"crop_border": 0.5}, "crop_border"), ({"protocols": ["sota"]}, "protocols"),
    ({"task": "segmentation"}, "task"), ({"real_train": 3}, "real_train"), ({"epochs": 0}, "epochs"),
    ({"data": None}, "data"),
])
def test_bad_options_name_the_field(bad, field):
    with pytest.raises(MetricsError, match=rf"utility option {field}"):
        parse_options("utility", {"data": {"path": "/nowhere"}, **bad})


def test_options_are_described_and_registered():
    ev = get_evaluation("utility")
    assert ev.needs_data and ev.kind == "utility"
    fields = ev.options.model_fields
    assert all(f.description for f in fields.values())
    opts = parse_options("utility", {"data": {"path": "/nowhere"}})
    assert opts.seeds >= 6 and opts.arch == "mobilenet_v3_small" and opts.resolution == 64 and opts.crop_border == 0
    assert opts.threads == 1 and opts.protocols == ["augmentation", "tstr", "feature_extraction"]


def test_unusable_synthetic_set_is_an_error(kermany):
    syn = SyntheticSet(kermany["NORMAL"][:10], np.full((10, 4), 2, np.int8))
    with pytest.raises(MetricsError, match="usable pneumonia label"):
        evaluate("utility", syn, {"data": kermany["data"], **FAST, "seeds": 2})
