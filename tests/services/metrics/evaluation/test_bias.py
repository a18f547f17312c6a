"""The bias probe on constructed cases: a letter painted on real NIH images is found (and far less often without
it), blank and smooth images carry none, crop_border removes what was found, and the kind runs on small sets
against the shipped rates and against real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from repo_paths import NIH64

from services.common.codecs.files import read_image_file
from services.common.datasets.preprocess import resize_center_crop
from services.common.findings import FINDINGS
from services.generator.registry import WEIGHTS_DIR
from services.metrics.errors import MetricsError
from services.metrics.evaluation import bias, evaluate
from services.metrics.evaluation.inputs import DataSpec, SyntheticSet, crop_border
from services.metrics.evaluation.registry import get_evaluation, parse_options

pytestmark = pytest.mark.usefixtures("one_torch_thread")

J = FINDINGS.index("lung_opacity")


def _nih(n: int) -> np.ndarray:
    """The first ``n`` NIH 64 px training images, [0, 1] floats."""
    import csv

    with open(NIH64 / "labels.csv") as fh:
        paths = [r["path"] for r in csv.DictReader(fh) if r["split"] == "train"][:n]
    return np.stack([resize_center_crop(read_image_file(NIH64 / p), 64) for p in paths]).astype(np.float32) / 255.0


def _smooth(side: int = 64, seed: int = 0) -> np.ndarray:
    """A chest-like smooth image: a bright ellipse on a dark background, soft, no edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
    cx, cy = 0.5 + 0.05 * rng.standard_normal(2)
    return (0.08 + 0.6 * np.exp(-((xx - cx) ** 2 / 0.08 + (yy - cy) ** 2 / 0.12))).astype(np.float32)


def _letter_box(painted: np.ndarray, plain: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.abs(painted - plain) > 0.05)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


# ---- the detector ---------------------------------------------------------------------------------------------------
def test_a_letter_painted_on_real_images_is_detected():
    x = _nih(40)
    check = bias.painted_check(x, size=0.12)
    assert check["painted_found"] >= 0.9  # found where it was painted (measured: 0.97 on the 600 NIH train images)
    assert check["painted"] >= 0.9
    assert check["unpainted"] <= check["painted"] - 0.3  # the natural NIH markers: about half the images


def test_painted_marker_box_and_score():
    base = _smooth(128)
    painted = bias.paint_marker(base, "R", size=0.1, corner="top-left")
    (d,) = bias.detect_markers(painted)
    assert d.has_marker and d.score >= bias.DEFAULT_THRESHOLD and d.glyphs == 1 and not d.has_text
    ly0, lx0, ly1, lx1 = _letter_box(painted, base)
    y0, x0, y1, x1 = d.bbox
    assert y0 <= ly0 + 1 and x0 <= lx0 + 1 and y1 >= ly1 - 1 and x1 >= lx1 - 1  # the box holds the letter
    f = bias.removal_fraction(d, painted.shape)
    assert f == pytest.approx(min(y1, x1) / 128) and f < 0.25  # top-left: the box's far edge
    # every corner, both letters, at the NIH size
    for corner in ("top-left", "top-right", "bottom-left", "bottom-right"):
        for text in "RL":
            (d,) = bias.detect_markers(bias.paint_marker(_smooth(64), text, 0.12, corner))
            assert d.has_marker, (corner, text)


@pytest.mark.parametrize("side", [64, 128])
def test_blank_and_smooth_images_carry_no_marker(side):
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
    cases = [np.zeros((side, side)), np.full((side, side), 0.5), np.ones((side, side)), xx, 0.3 + 0.4 * yy * xx,
             *[_smooth(side, s) for s in range(4)]]
    dets = bias.detect_markers(np.stack(cases).astype(np.float32))
    assert not any(d.has_marker for d in dets)
    assert all(d.bbox is None or d.score < bias.DEFAULT_THRESHOLD for d in dets)


def test_a_blob_cut_by_the_image_edge_or_a_line_is_not_a_marker():
    img = _smooth(64)
    edge = img.copy()
    edge[0:6, 20:25] = 1.0  # a bright patch cut by the top edge (a collimation / border artefact)
    line = img.copy()
    line[5, 10:22] = 1.0  # a thin bright line (wire, rib edge)
    inside = img.copy()
    inside[30:36, 30:35] = 1.0  # a glyph-sized patch, but in the centre
    assert not any(d.has_marker for d in bias.detect_markers(np.stack([edge, line, inside])))


def test_crop_border_removes_the_detection():
    base = np.stack([_smooth(64, s) for s in range(4)])
    painted = np.stack([bias.paint_marker(im, "RL"[i % 2], 0.12, ("top-left", "top-right")[i % 2])
                        for i, im in enumerate(base)])
    dets = bias.detect_markers(painted)
    assert all(d.has_marker for d in dets)
    f = max(bias.removal_fraction(d, painted.shape[-2:]) for d in dets)
    assert 0 < f < 0.25
    assert not any(d.has_marker for d in bias.detect_markers(crop_border(painted, f + 0.02)))
    # a crop too small leaves the letter (cut, resized) in place
    assert any(d.has_marker for d in bias.detect_markers(crop_border(painted, 0.01)))


def test_text_is_several_glyphs_on_one_line():
    base = _smooth(128)
    (word,) = bias.detect_markers(bias.paint_marker(base, "PORTABLE", 0.06, "top-right"))
    (spaced,) = bias.detect_markers(bias.paint_marker(base, "A P", 0.08, "top-right"))
    (letter,) = bias.detect_markers(bias.paint_marker(base, "R", 0.08, "top-right"))
    assert word.has_text and word.glyphs >= 3 and spaced.has_text and spaced.glyphs >= 2
    assert letter.has_marker and not letter.has_text and letter.glyphs == 1


def test_detector_rejects_bad_arguments():
    with pytest.raises(MetricsError):
        bias.detect_markers(np.zeros((1, 32, 32)), border=0.6)
    with pytest.raises(ValueError):
        bias.paint_marker(np.zeros((32, 32)), corner="middle")
    assert bias.detect_markers(np.zeros((0, 32, 32))) == []
    assert bias.detect_markers(np.zeros((32, 32)))[0].has_marker is False  # one (h, w) image


# ---- the kind -------------------------------------------------------------------------------------------------------
def _set(model_id: str | None, side: int = 128) -> SyntheticSet:
    """16 images: the 8 "normals" (lung opacity absent) carry an "R", the 8 "pneumonias" none — the published case."""
    imgs, codes = [], []
    for i in range(16):
        img = _smooth(side, i)
        normal = i % 2 == 0
        imgs.append(bias.paint_marker(img, "R", 0.08, "top-left") if normal else img)
        codes.append([0, 0, 0, 0] if normal else [2, 1, 2, 2])
    return SyntheticSet(np.stack(imgs), np.asarray(codes, np.int8), model_id=model_id, resolution=side)


def test_the_kind_against_the_shipped_rates():
    res = evaluate("bias", _set("stylegan2-kermany128"), {"gallery": 4})
    h = res.headline
    assert h["synthetic_marker_rate"] == 0.5
    shipped = json.loads(bias.RATES_FILE.read_text())["models"]["stylegan2-kermany128"]["counts"]["overall"]
    assert h["real_marker_rate"] == pytest.approx(shipped["markers"] / shipped["n"])
    assert h["marker_p_value"] is not None and 0 <= h["marker_p_value"] <= 1
    assert 0 < h["suggested_crop_border"] < 0.25 and h["synthetic_marker_rate_cropped"] == 0.0
    rates, shortcut, crop = res.tables
    assert rates.rows[0][:4] == ["all images", "", 16, 0.5]
    lo = next(r for r in rates.rows if r[0] == "lung_opacity" and r[1] == "absent")
    assert lo[3] == 1.0 and lo[7] == shipped["n"] - next(
        r for r in rates.rows if r[0] == "lung_opacity" and r[1] == "present")[7]
    (row,) = [r for r in shortcut.rows if r[0] == "lung_opacity"]
    assert row[1] == 0.0 and row[2] == 1.0 and row[3] < 0.01  # the synthetic shortcut: markers only on normals
    assert row[4] < row[5]  # the real Kermany normals carry the letter more often, too
    assert crop.rows[0][3] == 0.0
    assert len(res.figures) == 1 and res.figures[0].png_base64
    assert [m["index"] for m in res.details["synthetic_markers"]] and all(
        m["index"] % 2 == 0 for m in res.details["synthetic_markers"])
    assert res.provenance.data["source"] == "shipped" and res.provenance.set_sizes["real"] == shipped["n"]
    assert res.warnings == []


def test_the_kind_against_real_data():
    res = evaluate("bias", _set(None, 64),
                   {"data": DataSpec(path=str(NIH64), layout="nih", split_by="recorded"), "max_real": 60,
                    "crop_border": 0.2, "gallery": 2})
    assert res.provenance.set_sizes == {"synthetic": 16, "real": 60}
    assert res.provenance.data["source"] == "data"
    assert 0.2 < res.headline["real_marker_rate"] < 0.8  # NIH: about half the images carry a marker
    crop = res.tables[-1]
    assert crop.rows[1][0] == "real" and crop.rows[1][3] is not None and crop.rows[1][3] < 0.1
    assert len(res.figures) == 2


def test_the_kind_without_a_real_side_warns():
    res = evaluate("bias", _set(None), {"crop_border": 0})
    assert res.headline["real_marker_rate"] is None and res.headline["synthetic_marker_rate"] == 0.5
    assert any("no real side" in w for w in res.warnings)
    assert len(res.tables) == 2  # rates + shortcut, no crop table with crop_border 0
    # other detector settings than the shipped ones: the shipped rates are not compared
    res = evaluate("bias", _set("stylegan2-kermany128"), {"threshold": 0.3})
    assert res.headline["real_marker_rate"] is None and any("settings" in w for w in res.warnings)


def test_options():
    assert get_evaluation("bias").kind == "bias"
    for bad in ({"border": 0.7}, {"threshold": 0}, {"real_split": "valid"}, {"crop_border": 0.5}):
        with pytest.raises(MetricsError):
            parse_options("bias", bad)
    with pytest.raises(MetricsError):
        evaluate("bias", SyntheticSet(np.zeros((0, 32, 32)), np.zeros((0, 4))), {})


def test_the_shipped_rates_cover_every_shipped_model():
    data = json.loads(bias.RATES_FILE.read_text())
    assert data["settings"] == bias._settings(bias.BiasOptions())
    for f in WEIGHTS_DIR.glob("*.json"):
        desc = json.loads(f.read_text())
        if not desc.get("training"):
            continue
        entry = data["models"][desc["model_id"]]
        tr = desc["training"]
        assert entry["counts"]["overall"]["n"] == tr.get("num_images", tr.get("images"))
        assert entry["resolution"] == desc["resolution"]
        for counts in entry["counts"].values():
            assert 0 <= counts["text"] <= counts["n"] and 0 <= counts["markers"] <= counts["n"]
