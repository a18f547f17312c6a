"""The memorisation evaluation on constructed cases with known answers: exact training copies are flagged in every
space (and C_T is strongly negative), unseen real images are flagged at about the quantile rate (C_T ≈ 0),
authenticity and C_T against hand computations, the gallery with and without the training data."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from repo_paths import NIH64

from services.metrics.errors import MetricsError
from services.metrics.evaluation import evaluate
from services.metrics.evaluation.indexes import load_index, user_dir, write_index
from services.metrics.evaluation.indexes.build import calibrate
from services.metrics.evaluation.indexes.neighbours import nearest
from services.metrics.evaluation.inputs import DataSpec, RealData, SyntheticSet, load_real
from services.metrics.evaluation.memorisation import authentic, c_t, mann_whitney_z
from services.metrics.evaluation.registry import get_evaluation, parse_options

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPEC = DataSpec(path=str(NIH64), layout="nih", views=["PA", "AP"], split_by="recorded")
FAST = ["pixel", "cxr-encoder"]


@pytest.fixture(scope="module")
def nih() -> RealData:
    return load_real(SPEC, 64)


def batch(images, model_id="stylegan2-cxr64", seeds=None) -> SyntheticSet:
    n = len(images)
    return SyntheticSet(images, np.full((n, 4), 2, np.int8), seeds or list(range(100, 100 + n)), model_id=model_id,
                        description="constructed", resolution=64)


def test_memorisation_is_a_registered_kind():
    ev = get_evaluation("memorisation")
    assert ev.kind == "memorisation" and not ev.needs_data  # the training data is optional
    with pytest.raises(MetricsError, match="spaces"):
        parse_options("memorisation", {"spaces": ["pixels"]})
    with pytest.raises(MetricsError, match="quantile"):
        parse_options("memorisation", {"quantile": 0.7})
    assert parse_options("memorisation", {"spaces": ["cxr-encoder", "pixel"]}).spaces == ["pixel", "cxr-encoder"]
    with pytest.raises(MetricsError, match="gallery_space 'inception' is not one of spaces"):
        evaluate("memorisation", batch(np.zeros((2, 64, 64))), {"spaces": ["pixel"], "gallery_space": "inception"})


def test_a_batch_of_exact_training_copies_is_flagged_as_memorised(nih):
    """The shipped index of the model's training set (found from stylegan2-cxr64's descriptor)."""
    syn = batch(nih.train_images[:40])
    r = evaluate("memorisation", syn, {"spaces": FAST, "gallery": 4})
    assert r.headline["index"] == "nih-cxr64-train"
    assert r.headline["memorised"] is True
    for s in FAST:
        assert r.headline[f"flagged[{s}]"] == 1.0
        assert r.headline[f"authenticity[{s}]"] == 0.0
        assert r.headline[f"C_T[{s}]"] < -3
    assert [im["pixel"]["nearest"] for im in r.details["images"]] == nih.train_ids[:40]
    assert all(im["near_copy"] for im in r.details["images"])
    assert r.provenance.set_sizes == {"synthetic": 40, "real_train": 600, "real_heldout": 200}
    assert set(r.provenance.extractors) == set(FAST) and r.provenance.data["index"]["name"] == "nih-cxr64-train"
    # no data given: the gallery shows the synthetic images and the table names their training images
    assert r.figures[0].title.startswith("Synthetic images nearest")
    pairs = r.tables[-1]
    assert pairs.title == "Closest pairs (pixel)" and len(pairs.rows) == 4
    assert all(row[3] in nih.train_ids[:40] for row in pairs.rows)


def test_inception_flags_exact_copies_too(nih):
    r = evaluate("memorisation", batch(nih.train_images[:3]), {"spaces": ["inception"], "gallery": 0})
    assert r.headline["flagged[inception]"] == 1.0 and r.headline["authenticity[inception]"] == 0.0
    assert r.figures == [] and "inception" in r.provenance.extractors


def test_the_held_out_split_is_flagged_at_the_quantile_rate(nih):
    """In the shipped index's own calibration set the rate is the quantile by construction."""
    r = evaluate("memorisation", batch(nih.test_images), {"spaces": FAST, "quantile": 0.1, "gallery": 0})
    for s in FAST:
        assert abs(r.headline[f"flagged[{s}]"] - 0.1) <= 0.01
        assert abs(r.headline[f"C_T[{s}]"]) < 0.5
    assert r.headline["memorised"] is False


@pytest.fixture(scope="module")
def half_index(nih):
    """An index whose held-out split is half of NIH valid (registered under $SYNTHRAD_HOME/indexes; made from the
    shipped index's stored features), so the other half is unseen real data that calibrated nothing."""
    shipped = load_index("nih-cxr64-train")
    cal = np.arange(shipped.n_heldout)[::2]
    meta = json.loads(json.dumps(shipped.meta))
    meta.update(name="nih-half", n_heldout=len(cal), heldout_ids=[shipped.heldout_ids[i] for i in cal])
    meta["spaces"] = {s: meta["spaces"][s] for s in FAST}
    spaces = {s: calibrate(s, shipped.space(s).train, shipped.space(s).heldout[cal], 5, shipped.stamp(s))
              for s in FAST}
    write_index(meta, spaces, user_dir())
    assert [shipped.heldout_ids[i] for i in cal] == [nih.test_ids[i] for i in cal]
    return np.delete(nih.test_images, cal, axis=0)


def test_unseen_real_images_are_flagged_at_about_the_quantile_rate_and_c_t_is_near_zero(nih, half_index):
    r = evaluate("memorisation", batch(half_index), {"index": "nih-half", "spaces": FAST, "quantile": 0.1,
                                                     "gallery": 0})
    for s in FAST:
        assert 0.0 <= r.headline[f"flagged[{s}]"] <= 0.25, r.headline
        assert abs(r.headline[f"C_T[{s}]"]) < 2.5, r.headline
        assert 0.3 < r.headline[f"authenticity[{s}]"] <= 1.0
    assert r.headline["memorised"] is False
    copies = evaluate("memorisation", batch(nih.train_images[:100]), {"index": "nih-half", "spaces": FAST,
                                                                        "gallery": 0, "cells": 4})
    assert copies.headline["memorised"] is True and all(copies.headline[f"C_T[{s}]"] < -3 for s in FAST)
    assert sum(1 for row in copies.details["cells"]["pixel"]) == 4  # cells re-partitioned from held-out features


def test_the_gallery_shows_closest_pairs_when_the_training_data_is_given(nih):
    syn = batch(nih.train_images[10:20])
    r = evaluate("memorisation", syn, {"spaces": ["pixel"], "gallery": 8, "data": SPEC.model_dump()})
    (fig,) = r.figures
    assert fig.title == "Closest synthetic / training pairs"
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(base64.b64decode(fig.png_base64))), np.float32) / 255
    assert im.shape == (2 * 66, 8 * 66)  # 8 pairs, synthetic and training side by side, 4 pairs per row
    left, right = im[:64, :64], im[:64, 66:130]
    np.testing.assert_allclose(left, right, atol=1 / 255 + 1e-6)  # exact copies: the pair is the same image


def test_data_without_a_known_index_builds_one_in_memory(nih):
    syn = batch(nih.train_images[:20], model_id="someone-elses-model")
    with pytest.raises(MetricsError, match="no training-set index is known for model 'someone-elses-model'"):
        evaluate("memorisation", syn, {"spaces": ["pixel"]})
    r = evaluate("memorisation", syn, {"spaces": ["pixel"], "data": SPEC.model_dump(), "gallery": 2})
    assert r.headline["index"].startswith("ad-hoc-") and r.headline["flagged[pixel]"] == 1.0
    assert any("built one in memory" in w for w in r.warnings)
    assert r.figures[0].title == "Closest synthetic / training pairs"


def test_authenticity_matches_a_hand_computation():
    train = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    # nearest other training point: 1, 1, |(5,5)-(1,0)| = sqrt(41)
    train_nn, _ = nearest(train, train, exclude_self=True)
    np.testing.assert_allclose(train_nn, [1.0, 1.0, np.sqrt(41.0)])
    syn = np.array([[0.2, 0.0],   # nearest (0,0) at 0.2 < 1: unauthentic
                    [3.0, 0.0],   # nearest (1,0) at 2 >= 1: authentic
                    [5.0, 5.5],   # nearest (5,5) at 0.5 < sqrt(41): unauthentic
                    [1.0, 1.0]])  # nearest (1,0) at 1 = 1: authentic (unauthentic only when strictly nearer)
    d, j = nearest(syn, train)
    np.testing.assert_allclose(d, [0.2, 2.0, 0.5, 1.0])
    assert list(j) == [0, 1, 2, 1]
    assert authentic(d, j, train_nn).tolist() == [False, True, False, True]


def test_the_in_cell_z_score_matches_scipy_and_c_t_weights_cells_by_held_out_share():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(0)
    q, p = rng.random(30), rng.random(40) + 0.1
    u = mannwhitneyu(q, p, alternative="less").statistic
    expected = (u - (30 * 40 / 2 - 0.5)) / np.sqrt(30 * 40 * 71 / 12)
    assert mann_whitney_z(q, p) == pytest.approx(expected)
    # copies: every generated distance 0 -> U = 0
    assert mann_whitney_z(np.zeros(10), np.ones(20)) == pytest.approx((0 - 99.5) / np.sqrt(200 * 31 / 12))
    # two cells: held-out shares 1/4 and 3/4; cell 1 has too few generated points and is left out
    gen_d, gen_c = np.r_[np.zeros(6), np.ones(2)], np.r_[np.zeros(6, int), np.ones(2, int)]
    test_d, test_c = np.r_[np.ones(5), np.ones(15)], np.r_[np.zeros(5, int), np.ones(15, int)]
    ct, rows = c_t(gen_d, gen_c, test_d, test_c, 2, min_cell_samples=5)
    assert [r["used"] for r in rows] == [True, False]
    assert ct == pytest.approx(mann_whitney_z(np.zeros(6), np.ones(5)))
    ct_all, _ = c_t(gen_d, gen_c, test_d, test_c, 2, min_cell_samples=1)
    z0, z1 = mann_whitney_z(np.zeros(6), np.ones(5)), mann_whitney_z(np.ones(2), np.ones(15))
    assert ct_all == pytest.approx(0.25 * z0 + 0.75 * z1)
