"""The shipped training-set indexes: features only (no images, ids relative), every file ≤ 20 MB and checked
against its recorded sha256, each shipped model mapped to the index of its training set, the stored calibration
consistent with the stored features, and the fixed pixel projection (Johnson–Lindenstrauss)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from repo_paths import NIH64

from services.metrics.errors import MetricsError
from services.metrics.evaluation import indexes as ix
from services.metrics.evaluation.indexes.neighbours import assign_cells, in_cell_nearest, nearest
from services.metrics.evaluation.inputs import DataSpec, load_real

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHIPPED = {"nih-cxr64-train": (600, 200, 64), "kermany-train": (4179, 1037, 128)}
MODELS = {"stylegan2-cxr64": "nih-cxr64-train", "ddpm-cxr64": "nih-cxr64-train",
          "stylegan2-kermany128": "kermany-train", "ddpm-kermany128": "kermany-train"}


def test_the_pixel_projection_is_fixed_and_preserves_distances_approximately():
    m = ix.jl_projection()
    assert m.shape == (4096, 256) and m.dtype == np.float32
    ix.jl_projection.cache_clear()
    np.testing.assert_array_equal(ix.jl_projection(), m)  # regenerated: the same matrix
    assert abs(float(m.mean())) < 1e-3 and float(m.var()) == pytest.approx(1 / 256, rel=0.01)
    rng = np.random.default_rng(1)
    a, b = rng.random((200, 64, 64), np.float32), rng.random((200, 64, 64), np.float32) * 0.5
    ratio = (np.linalg.norm(ix.pixel_features(a) - ix.pixel_features(b), axis=1)
             / np.linalg.norm((a - b).reshape(200, -1), axis=1))
    assert abs(ratio.mean() - 1) < 0.02 and ratio.std() < 0.07  # ≈ 1/sqrt(2·256) = 4.4 %


def test_the_shipped_indexes_are_listed_with_their_sources():
    infos = {i.name: i for i in ix.list_indexes()}
    assert set(SHIPPED) <= set(infos)
    for name, (n, m, res) in SHIPPED.items():
        i = infos[name]
        assert (i.n_train, i.n_heldout, i.resolution) == (n, m, res)
        assert i.spaces == ix.SPACES and i.to_dict()["shipped"] is True


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_index_holds_features_only_in_small_checked_files(name):
    index = ix.load_index(name)
    meta = json.loads((ix.SHIPPED_DIR / f"{name}.json").read_text())
    files = [e[p]["file"] for e in meta["spaces"].values() for p in ("main", "heldout")]
    for f in files:
        assert (ix.SHIPPED_DIR / f).stat().st_size <= 20 * 2**20
    ids = index.train_ids + index.heldout_ids
    assert len(ids) == index.n_train + index.n_heldout and len(set(ids)) == len(ids)
    assert not any(t.startswith("/") or ".." in t or ":" in t for t in ids)  # relative ids, never paths
    for space in ix.SPACES:
        sd = index.space(space)  # sha256-checked
        assert sd.train.shape == (index.n_train, meta["spaces"][space]["dims"])
        assert sd.heldout.shape[0] == index.n_heldout and sd.cells == meta["spaces"][space]["cells"]
        index.check_featurizer(space)  # this machine's featurizers are the index's


def test_the_stored_calibration_follows_from_the_stored_features():
    sd = ix.load_index("nih-cxr64-train").space("cxr-encoder")
    d, j = nearest(sd.heldout, sd.train)
    np.testing.assert_allclose(d, sd.heldout_nn, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(j, sd.heldout_nn_index)
    np.testing.assert_allclose(nearest(sd.train, sd.train, exclude_self=True)[0], sd.train_nn, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(assign_cells(sd.heldout, sd.centres), sd.heldout_cells)
    np.testing.assert_allclose(in_cell_nearest(sd.heldout, sd.heldout_cells, sd.train, sd.train_cells),
                               sd.heldout_cell_nn, rtol=1e-5, atol=1e-5)
    assert sd.threshold(0.01) < sd.threshold(0.5)


def test_the_stored_features_are_those_of_the_training_images():
    real = load_real(DataSpec(path=str(NIH64), layout="nih", views=["PA", "AP"], split_by="recorded"), 64,
                     splits=("train",))
    index = ix.load_index("nih-cxr64-train")
    assert real.train_ids == index.train_ids
    for space in ("pixel", "cxr-encoder"):
        sd = index.space(space)
        f = index.featurize(space, real.train_images[:16])
        rel = np.linalg.norm(f - sd.train[:16], axis=1) / np.linalg.norm(sd.train[:16], axis=1)
        assert rel.max() < 2e-3  # float16 storage


def test_each_shipped_model_maps_to_the_index_of_its_training_set():
    for model, name in MODELS.items():
        assert ix.index_for_model(model) == name
        assert ix.resolve_index(None, model).name == name
    assert ix.index_for_model("no-such-model") is None
    with pytest.raises(MetricsError, match="no training-set index is known for model 'no-such-model'"):
        ix.resolve_index(None, "no-such-model")


def test_the_source_rule():
    src = {"data": "nih-chestxray14-64", "layout": "nih", "views": ["PA", "AP"], "split": "train",
           "split_by": "recorded", "images": 600}
    ok = {"data": "nih-chestxray14-64", "layout": "nih", "views": "all", "split": "train", "images": 600}
    assert ix.source_matches(src, ok)  # split_by absent = recorded; "all" matches when the counts agree
    assert ix.source_matches(src, {**ok, "views": ["AP", "PA"], "num_images": 600})
    assert not ix.source_matches(src, {**ok, "views": ["PA"]})
    assert not ix.source_matches(src, {**ok, "split_by": "patient"})
    assert not ix.source_matches(src, {**ok, "images": 599})
    assert not ix.source_matches(src, {**ok, "data": "other"})
    assert not ix.source_matches(src, {})


def _copy_index(name: str, new: str, folder):
    folder.mkdir(parents=True, exist_ok=True)
    meta = json.loads((ix.SHIPPED_DIR / f"{name}.json").read_text())
    meta["name"] = new
    for e in meta["spaces"].values():
        for p in ("main", "heldout"):
            f = e[p]["file"]
            e[p]["file"] = f.replace(name, new, 1)
            shutil.copy(ix.SHIPPED_DIR / f, folder / e[p]["file"])
    (folder / f"{new}.json").write_text(json.dumps(meta))
    return meta


def test_a_damaged_index_file_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNTHRAD_HOME", str(tmp_path))  # the damaged copy stays out of other tests' home
    meta = _copy_index("nih-cxr64-train", "damaged-copy", ix.user_dir())
    path = ix.user_dir() / meta["spaces"]["pixel"]["main"]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    index = ix.load_index("damaged-copy")
    with pytest.raises(MetricsError, match="sha256.*damaged"):
        index.space("pixel")
    index.space("cxr-encoder")  # the other files are fine


def test_features_of_another_network_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNTHRAD_HOME", str(tmp_path))
    meta = _copy_index("nih-cxr64-train", "other-net", ix.user_dir())
    meta["spaces"]["cxr-encoder"]["stamp"]["weights_sha256"] = "0" * 64
    (ix.user_dir() / "other-net.json").write_text(json.dumps(meta))
    with pytest.raises(MetricsError, match="another cxr-encoder featurizer"):
        ix.load_index("other-net").featurize("cxr-encoder", np.zeros((1, 64, 64), np.float32))
    with pytest.raises(MetricsError, match="unknown training index 'nope'"):
        ix.load_index("nope")


def test_the_builder_writes_an_index_that_loads(tmp_path):
    from services.metrics.evaluation.indexes.build import main

    out = tmp_path / "idx"
    assert main(["--data", str(NIH64), "--layout", "nih", "--views", "PA,AP", "--split-by", "recorded",
                 "--name", "nih-pixel", "--spaces", "pixel", "--cells", "3", "--out", str(out)]) == 0
    meta = json.loads((out / "nih-pixel.json").read_text())
    assert meta["source"]["data"] == "nih-chestxray14-64" and meta["spaces"]["pixel"]["cells"] == 3
    index = ix.TrainingIndex(meta, out)
    shipped = ix.load_index("nih-cxr64-train")
    # reproducible up to BLAS summation order (thread count): a few float16 steps out of 153,600 values
    np.testing.assert_allclose(index.space("pixel").train, shipped.space("pixel").train, rtol=0, atol=5e-3)
    assert sorted(p.name for p in out.iterdir()) == ["nih-pixel.json", "nih-pixel.pixel.heldout.npz",
                                                     "nih-pixel.pixel.npz"]
