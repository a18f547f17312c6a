"""The held-out quality figure (services/generator/train/quality.py), its card section (cards.py) and finalize on a
trainer-style run folder: a tiny random StyleGAN2 and a tiny Kermany-style folder (NORMAL/ PNEUMONIA/, patient
ids in the file names), so the patient split, equal set sizes, targets and the card are checked without the
shared data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from stylegan2_tiny import make_model

from services.common.datasets import load_records
from services.common.datasets.splits import patient_key
from services.generator import cards
from services.generator.train import quality as Q

N = 12


def _toy_kermany(root):
    """60 patients × 2 images (20 px PNGs): person<i>_bacteria_<j> under PNEUMONIA, IM-<i>-<j> under NORMAL."""
    rng = np.random.default_rng(0)
    for i in range(60):
        pneu = i % 2 == 0
        folder = root / ("PNEUMONIA" if pneu else "NORMAL")
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(2):
            name = f"person{i}_bacteria_{j}.png" if pneu else f"IM-{1000 + i:04d}-{j:04d}.png"
            px = np.clip(rng.normal(150 if pneu else 100, 40, (20, 20)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(folder / name)
    return root


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _toy_kermany(tmp_path_factory.mktemp("kermany-toy"))


@pytest.fixture(scope="module")
def figure(tmp_path_factory, toy):
    """One quality figure (both extractors) of a registered tiny model, and the records each set was loaded
    from (a spy on ``load_images``)."""
    from services.common.config import get_settings
    from services.generator import registry

    models = tmp_path_factory.mktemp("models")
    mid = make_model(models, "sg2-quality-test")
    loaded = []
    real_load = Q.load_images

    def spy(records, resolution, cache_dir=None):
        loaded.append(list(records))
        x = real_load(records, resolution, cache_dir)
        assert x.shape[1:] == (resolution, resolution) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
        return x

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SYNTHRAD_MODEL_DIRS", str(models))
        mp.setattr(Q, "load_images", spy)
        get_settings.cache_clear()
        registry._loaded.clear()
        try:
            q = Q.quality(mid, N, "cpu", toy, "folder", "all")
        finally:
            registry._loaded.clear()
    get_settings.cache_clear()
    return q, loaded


def test_equal_sizes_and_patient_disjoint_sets(figure, toy):
    q, loaded = figure
    held, floor = loaded
    assert q["n"] == q["n_generated"] == q["n_heldout"] == q["n_floor"] == N == len(held) == len(floor)
    assert {r.split for r in held} == {"test"} and {r.split for r in floor} == {"train"}
    assert not {patient_key(r) for r in held} & {patient_key(r) for r in floor}
    # the held-out patients are absent from the *whole* training split, not only from the floor's sample
    train_patients = {patient_key(r) for r in load_records(toy, "folder", views=None, split="train", split_by="patient")}
    assert not {patient_key(r) for r in held} & train_patients
    sp = q["split"]
    assert sp["by"] == "patient" and sp["description"] == Q.SPLIT_DESCRIPTION and sp["shared_patients"] == 0
    assert q["resolution"] == 16 and q["dataset"] == "kermany" and q["views"] == "all" and not q["notes"]
    json.dumps(q, allow_nan=False)  # plain JSON: the card and finalize read it back


def test_measures_named_by_extractor_with_floor_and_ratio(figure):
    q, _ = figure
    inc, cxr = q["extractors"]["inception"], q["extractors"]["cxr-encoder"]
    assert "error" not in inc, inc.get("error")
    assert "error" not in cxr, cxr.get("error")
    for side in ("generated", "floor"):
        assert {"FID", "KID", "precision", "recall"} <= set(inc[side])
        assert {"FD_cxr-encoder", "KID_cxr-encoder", "precision", "recall"} <= set(cxr[side])
        assert "FID" not in cxr[side]  # a non-Inception Fréchet distance is never called FID
        assert 0 <= inc[side]["precision"] <= 1 and 0 <= inc[side]["recall"] <= 1
    assert inc["ratios"]["FID / floor"] == pytest.approx(inc["generated"]["FID"] / inc["floor"]["FID"])
    assert "FD_cxr-encoder / floor" in cxr["ratios"]
    assert inc["stamp"]["name"] == "inception"


def test_targets_for_kermany_and_card(figure):
    q, _ = figure
    (t,) = q["targets"]
    assert t["metric"] == "precision" and t["threshold"] == 0.5
    assert t["value"] == q["extractors"]["inception"]["generated"]["precision"]
    assert t["met"] is (t["value"] >= 0.5) and q["targets_met"] is t["met"]
    desc = {"model_id": q["model_id"], "family": "stylegan2", "resolution": 16, "weights": "x.safetensors"}
    text = cards.render(cards.describe(desc, quality=q))
    assert "generated vs held-out (n = 12 / 12)" in text and "floor: real train vs held-out" in text
    assert "patient-disjoint 80/20 by hashed patient id" in text
    assert "precision ≥ 0.5" in text and ("**met**" in text or "**not met**" in text)
    assert "`FD_cxr-encoder`" not in text and "FD_cxr-encoder" in text and "| `inception` | FID |" in text


def test_fewer_heldout_images_than_asked_uses_all_and_says_so(toy, tmp_path):
    from services.generator.models.stylegan2.loader import load

    mid = make_model(tmp_path, "sg2-quality-few")
    desc = json.loads((tmp_path / f"{mid}.json").read_text())
    g = load(desc, tmp_path / desc["weights"], "eager", "cpu")
    n_test = len(load_records(toy, "folder", views=None, split="test", split_by="patient"))
    q = Q.quality(mid, 1000, "cpu", toy, "folder", None, extractors=("cxr-encoder",), generator=g)
    assert q["n"] == q["n_generated"] == q["n_floor"] == n_test < 1000 and q["n_requested"] == 1000
    assert q["notes"] and f"only {n_test} held-out images" in q["notes"][0]
    assert "inception" not in q["extractors"]
    assert q["targets"][0]["met"] is None and q["targets_met"] is None  # the Inception precision was not measured
    text = "\n".join(cards.quality_lines(q))
    assert f"only {n_test} held-out images" in text and "not measured" in text


def test_nih_stylegan2_targets():
    specs = Q.target_specs("stylegan2", "nih", 64)
    assert [s["metric"] for s in specs] == ["FID", "precision", "recall"]
    assert Q.target_specs("ddpm", "nih", 64) == [] and Q.target_specs("stylegan2", "nih", 128) == []
    assert [s["threshold"] for s in Q.target_specs("ddpm", "kermany", 128)] == [0.5]
    block = {"inception": {"generated": {"FID": 120.0, "precision": 0.45, "recall": 0.2},
                           "floor": {"FID": 63.5, "precision": 0.65, "recall": 0.77}}}
    t = Q.check_targets(specs, block)
    assert t[0]["threshold"] == pytest.approx(127.0) and t[0]["met"] is True
    assert [x["met"] for x in t] == [True, True, False] and Q.all_met(t) is False
    assert Q.all_met(Q.check_targets(specs, {"inception": {"error": "x"}})) is None
    assert Q.all_met([]) is None
    lines = "\n".join(cards.targets_lines({"targets": t, "targets_met": False}))
    assert "not met (2 of 3 met)" in lines and "127 (2 × floor)" in lines
    assert Q.dataset_kind("/d/nih-chestxray14-64", "nih") == "nih"
    assert Q.dataset_kind("/d/kermany-pneumonia-224/train", "folder") == "kermany"
    assert Q.dataset_kind("/d/other", "chexpert") is None


def test_old_quality_figures_still_render():
    old = {"n_generated": 300, "reference": "nih-cxr64-valid",
           "inception": {"generated": [{"name": "FID", "value": 235.1}], "real_train": [{"name": "FID", "value": 54.5}]},
           "cxr-encoder": {"error": "RuntimeError('x')"}}
    text = "\n".join(cards.quality_lines(old))
    assert "`nih-cxr64-valid` reference" in text and "FID = 235.1" in text and "cxr-encoder: RuntimeError" in text
    assert cards.quality_lines({"inception": {"generated": None}})  # missing keys do not raise


def test_finalize_ships_a_trainer_run_folder(toy, tmp_path):
    from services.generator.train import finalize

    run, weights = tmp_path / "run" / "export", tmp_path / "weights"
    run.mkdir(parents=True)
    mid = make_model(run, "sg2-finalize-test")
    state = run / f"{mid}.train.safetensors"
    state.write_bytes(b"training state")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(run / f"{mid}-samples.png")
    desc = json.loads((run / f"{mid}.json").read_text())
    desc.update(samples=f"{mid}-samples.png", training_state={"file": state.name, "sha256": "0" * 64},
                training={"data": str(toy), "layout": "folder", "views": "all", "kimg": 1})
    (run / f"{mid}.json").write_text(json.dumps(desc))
    out = finalize.main(["--from", str(run), "--model-id", mid, "--weights-dir", str(weights),
                         "--results", str(tmp_path / "RESULTS.md"), "--eval-n", "4", "--eval-epochs", "1",
                         "--quality-n", str(N), "--quality-extractors", "cxr-encoder"])
    shipped = json.loads((weights / f"{mid}.json").read_text())
    assert shipped["training_state"] == desc["training_state"]
    assert (weights / state.name).read_bytes() == b"training state"
    assert (weights / f"{mid}.safetensors").exists() and (weights / f"{mid}-samples.png").exists()
    assert shipped["training"]["data"] == toy.name
    cond, q = out["conditioning"], out["quality"]
    assert cond["split_by"] == "patient" and cond["heldout_split"] == "test" and cond["layout"] == "folder"
    assert q["format"] == Q.FORMAT and q["n"] == N and q["layout"] == "folder" and q["dataset"] == "kermany"
    card = (weights / f"{mid}.md").read_text()
    assert "## Quality vs held-out real images" in card and "generated vs held-out" in card
    assert "`test` split, patient-disjoint" in card
    assert not math.isnan(q["extractors"]["cxr-encoder"]["generated"]["FD_cxr-encoder"])


def test_finalize_takes_data_layout_views_from_the_run(toy, tmp_path):
    from services.generator.train import finalize

    run = {"training": {"data": str(toy), "layout": "folder", "views": "all"}}
    assert finalize.eval_data(run, None, None, None) == (str(toy), "folder", None)
    assert finalize.eval_data(run, None, "nih", "PA,AP")[1:] == ("nih", ("PA", "AP"))
    assert finalize.eval_data({}, None, None, None) == (str(Q.DEFAULT_DATA), "nih", None)
    with pytest.raises(SystemExit, match="--data is needed"):
        finalize.eval_data({"training": {"data": str(tmp_path / "gone" / "train"), "layout": "folder"}}, None, None, None)
