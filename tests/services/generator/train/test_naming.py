"""Training exports under a new id unless told to replace (services/generator/train/naming.py + registry)."""

import json
import shutil

import pytest
from toy_data import ToyXrays

from services.generator import registry
from services.generator.train.naming import ModelIdTaken, default_model_id, export_model_id
from services.generator.train.stylegan2 import StyleGAN2Trainer, TrainConfig

NET = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16, d_channel_base=128,
           d_channel_max=16)



pytestmark = pytest.mark.usefixtures("one_torch_thread")  # restores the thread count afterwards

def cfg(out, **kw):
    base = dict(out=str(out), resolution=16, batch=4, device="cpu", net=NET, progress=False, snap_minutes=0,
                max_steps=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_default_id_comes_from_the_run_folder(tmp_path):
    assert default_model_id("stylegan2", tmp_path / "my run #3") == "stylegan2-my-run-3"
    assert export_model_id(None, "ddpm", tmp_path / "toy-run-7", replace=False) == "ddpm-toy-run-7"


def test_shipped_ids_and_aliases_are_refused_before_training(tmp_path):
    with pytest.raises(ModelIdTaken, match="registered model 'stylegan2-cxr64'.*--replace"):
        StyleGAN2Trainer(cfg(tmp_path / "a", model_id="stylegan2-cxr64"), dataset=ToyXrays(states=2))
    assert not (tmp_path / "a").exists()  # refused before anything was written
    with pytest.raises(ModelIdTaken, match="alias of model 'ddpm-cxr64'"):
        export_model_id("ddpm", "ddpm", tmp_path, replace=False)
    with pytest.raises(ModelIdTaken, match="continues 'stylegan2-cxr64'"):
        export_model_id("stylegan2-cxr64", "stylegan2", tmp_path, replace=False, continues="stylegan2-cxr64")
    assert export_model_id("stylegan2-cxr64", "stylegan2", tmp_path, replace=True) == "stylegan2-cxr64"


def test_an_export_only_takes_over_a_shipped_id_with_replace(tmp_path, monkeypatch):
    tr = StyleGAN2Trainer(cfg(tmp_path / "run", model_id="sg2-naming-test"), dataset=ToyXrays(states=2))
    tr.train()
    exp = tmp_path / "run" / "export"
    # the same files under a shipped id, as an earlier release's export would have written them
    desc = json.loads((exp / "sg2-naming-test.json").read_text())
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    shutil.copyfile(exp / desc["weights"], shadow / desc["weights"])
    (shadow / "stylegan2-cxr64.json").write_text(json.dumps({**desc, "model_id": "stylegan2-cxr64"}))
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(shadow))
    info = registry.model_info("stylegan2-cxr64")
    assert info.resolution == 64  # still the shipped model: the 16 px copy is ignored (and logged)
    (shadow / "stylegan2-cxr64.json").write_text(json.dumps({**desc, "model_id": "stylegan2-cxr64",
                                                             "replaces": "stylegan2-cxr64"}))
    assert registry.model_info("stylegan2-cxr64").resolution == 16  # --replace exports say so, and win
