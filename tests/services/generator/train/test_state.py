"""Training state shipped beside a model (services/generator/train/state.py) and --resume-from."""

import json

import pytest
import torch
from toy_data import ToyXrays

from services.generator.models.stylegan2.network import Discriminator, Generator, StyleGAN2Config
from services.generator.train import state as st
from services.generator.train.diffusion import DiffusionTrainConfig, DiffusionTrainer
from services.generator.train.stylegan2 import StyleGAN2Trainer, TrainConfig

NET = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16, d_channel_base=128,
           d_channel_max=16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sg2_cfg(out, **kw):
    base = dict(out=str(out), resolution=16, batch=4, device="cpu", net=NET, progress=False, snap_minutes=0,
                aug="ada", r1_interval=2, seed=3, model_id="sg2-state-test")
    base.update(kw)
    return TrainConfig(**base)


def test_factored_second_moments_keep_row_and_column_structure():
    g = torch.Generator().manual_seed(0)
    r, c = torch.rand(8, generator=g) + 0.1, torch.rand(12, generator=g) + 0.1
    v = torch.outer(r, c)  # rank one: restored exactly
    parts = st.factor(v)
    assert set(parts) == {"row", "col"} and parts["row"].numel() + parts["col"].numel() == 20
    assert torch.allclose(st.unfactor(parts, v.shape), v, rtol=1e-5)
    conv = torch.rand(4, 3, 3, 3, generator=g)
    assert st.unfactor(st.factor(conv), conv.shape).shape == conv.shape
    b = torch.rand(5, generator=g)
    assert torch.equal(st.unfactor(st.factor(b), b.shape), b)


def test_stylegan2_export_ships_state_and_resume_from_continues(tmp_path, monkeypatch):
    first = StyleGAN2Trainer(sg2_cfg(tmp_path / "a", max_steps=4), dataset=ToyXrays(states=2))
    first.train()
    exp = tmp_path / "a" / "export"
    desc = json.loads((exp / "sg2-state-test.json").read_text())
    entry = desc["training_state"]
    assert entry["file"] == "sg2-state-test.train.safetensors" and entry["step"] == 4 and entry["nimg"] == 16
    loaded = st.load_state(exp / entry["file"], entry["sha256"])
    assert set(loaded.nets("G")) == set(first.G.state_dict()) and set(loaded.nets("D")) == set(first.D.state_dict())
    assert all(v.dtype == torch.float16 for v in loaded.nets("D").values() if v.is_floating_point())
    # the shipped weights file is fp16 too (half the size of fp32)
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(str(exp / desc["weights"])).values() if v.is_floating_point())

    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(exp))
    nxt = StyleGAN2Trainer(sg2_cfg(tmp_path / "b", max_steps=6, resume_from="sg2-state-test",
                                   model_id="sg2-state-test-2", resolution=0), dataset=ToyXrays(states=2))
    assert nxt.step == 4 and nxt.nimg == 16
    for k, v in first.D.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(nxt.D.state_dict()[k].float(), v.float(), atol=2e-3, rtol=1e-3), k
    for k, v in first.G_ema.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(nxt.G_ema.state_dict()[k].float(), v.float(), atol=2e-3, rtol=1e-3), k
    p = next(nxt.D.parameters())
    assert torch.count_nonzero(nxt.optD.state[p]["exp_avg_sq"]) > 0 and int(nxt.optD.state[p]["step"]) == 4
    assert nxt.aug.probability() == pytest.approx(first.aug.probability(), abs=1e-6)
    summary = nxt.train()
    assert summary["step"] == 6 and summary["kimg"] == pytest.approx(0.024)
    desc2 = json.loads((tmp_path / "b" / "export" / "sg2-state-test-2.json").read_text())
    assert desc2["training"]["continued_from"] == "sg2-state-test" and desc2["training_state"]["step"] == 6


def test_resume_from_checks_family_hash_and_resolution(tmp_path, monkeypatch):
    StyleGAN2Trainer(sg2_cfg(tmp_path / "a", max_steps=1), dataset=ToyXrays(states=2)).train()
    exp = tmp_path / "a" / "export"
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(exp))
    with pytest.raises(st.TrainingStateError, match="is a stylegan2 model, not ddpm"):
        st.open_shipped("sg2-state-test", "ddpm")
    with pytest.raises(ValueError, match="the model is 16 px, --resolution is 32"):
        StyleGAN2Trainer(sg2_cfg(tmp_path / "b", resume_from="sg2-state-test", model_id="x-1", resolution=32),
                         dataset=ToyXrays(states=2))
    f = exp / "sg2-state-test.train.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(st.TrainingStateError, match="does not match the sha256"):
        st.open_shipped(str(exp / "sg2-state-test.json"), "stylegan2")
    with pytest.raises(st.TrainingStateError, match="unknown model"):
        st.open_shipped("no-such-model", "stylegan2")


def test_ddpm_export_ships_state_and_resume_from_continues(tmp_path, monkeypatch):
    def cfg(out, **kw):
        base = dict(out=str(out), resolution=16, preset="tiny", batch=4, grid_every=0, ckpt_every=0, grid_seeds=2,
                    grid_steps=2, progress=False, device="cpu")
        base.update(kw)
        return DiffusionTrainConfig(**base)

    first = DiffusionTrainer(cfg(tmp_path / "a", max_steps=3, model_id="ddpm-state-test"), dataset=ToyXrays())
    desc = first.fit()
    assert desc["training_state"]["step"] == 3
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tmp_path / "a"))
    nxt = DiffusionTrainer(cfg(tmp_path / "b", max_steps=5, resume_from="ddpm-state-test", model_id="ddpm-state-2",
                               preset="cxr64", resolution=64), dataset=ToyXrays())
    assert nxt.resolution == 16 and nxt.unet_kwargs == first.unet_kwargs  # the model's UNet, not the options'
    desc2 = nxt.fit()
    assert desc2["training"]["steps"] == 5 and desc2["training"]["images_seen"] == 20
    assert desc2["training"]["continued_from"] == "ddpm-state-test"
    p = next(nxt.model.parameters())
    assert torch.count_nonzero(nxt.opt.state[p]["exp_avg_sq"]) > 0


@pytest.mark.parametrize("resolution", [64, 128])
def test_shipped_stylegan2_state_fits_the_file_limit(tmp_path, resolution):
    """The shipped StyleGAN2 shape (G 4.6 M, D 5.0 M params): raw G + D in fp16 and the factored moments stay
    under the 20 MB a shipped file may have."""
    cfg = StyleGAN2Config(resolution=resolution)
    G, D = Generator(cfg), Discriminator(cfg)
    opt = torch.optim.Adam(list(G.parameters()) + list(D.parameters()))
    for p in list(G.parameters()) + list(D.parameters()):
        opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.rand_like(p)}
    tensors = {**st.net_tensors("G", G), **st.net_tensors("D", D), **st.adam_moments(opt, G.named_parameters(), "G"),
               **st.adam_moments(opt, D.named_parameters(), "D")}
    entry = st.save_state(tmp_path / "s.train.safetensors", st.TrainingState("stylegan2", 1, 1, tensors=tensors))
    assert entry["bytes"] < st.MAX_FILE_BYTES


def test_state_over_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(st, "MAX_FILE_BYTES", 1000)
    with pytest.raises(st.TrainingStateError, match="over the 0 MB"):
        st.save_state(tmp_path / "big.train.safetensors",
                      st.TrainingState("ddpm", 0, 0, tensors={"net/x/w": torch.zeros(10_000, dtype=torch.float16)}))
    assert not list(tmp_path.iterdir())  # nothing half-written
