"""StyleGAN2 training: exact resume, augmentation (no flips), export, and the CLI on the shared NIH data."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from services.generator.train.augment import AdaptiveAugment
from services.generator.train.stylegan2 import StyleGAN2Trainer, TrainConfig

NET = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16, d_channel_base=128,
           d_channel_max=16)


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n=12, res=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, res, res, generator=g) * 2 - 1
        self.c = torch.randint(0, 2, (n, 4), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.c[i]


def cfg(out, **kw):
    base = dict(out=str(out), resolution=16, batch=4, device="cpu", net=NET, progress=False, snap_minutes=0,
                aug="fixed", aug_p=0.5, r1_interval=2, export=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _params(tr):
    return {f"{n}.{k}": v.detach().clone() for n, m in (("G", tr.G), ("D", tr.D), ("E", tr.G_ema))
            for k, v in m.state_dict().items()}


def test_resume_continues_step_count_and_matches(tmp_path):
    torch.set_num_threads(1)
    straight = StyleGAN2Trainer(cfg(tmp_path / "a", max_steps=3), dataset=ToyData())
    straight.train()
    assert straight.step == 3 and straight.nimg == 12
    first = StyleGAN2Trainer(cfg(tmp_path / "b", max_steps=1), dataset=ToyData())
    first.train()
    assert (tmp_path / "b" / "checkpoint.pt").exists() and first.step == 1
    resumed = StyleGAN2Trainer(cfg(tmp_path / "b", max_steps=3, resume=True), dataset=ToyData())
    assert resumed.step == 1 and resumed.nimg == 4
    resumed.train()
    assert resumed.step == 3 and resumed.nimg == 12
    pa, pb = _params(straight), _params(resumed)
    assert pa.keys() == pb.keys()
    diff = max(float((pa[k].float() - pb[k].float()).abs().max()) for k in pa)
    assert diff == 0.0
    # the trained G differs from a fresh one (training did something)
    fresh = StyleGAN2Trainer(cfg(tmp_path / "c", max_steps=0), dataset=ToyData())
    assert any(not torch.equal(fresh.G.state_dict()[k], straight.G.state_dict()[k]) for k in fresh.G.state_dict())
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert {"loss_G", "loss_D", "img_s", "aug_p"} <= set(log[0])


def test_resume_refuses_other_architecture(tmp_path):
    StyleGAN2Trainer(cfg(tmp_path, max_steps=1), dataset=ToyData()).train()
    with pytest.raises(ValueError, match="different network config"):
        StyleGAN2Trainer(cfg(tmp_path, resume=True, net={**NET, "channel_max": 8}), dataset=ToyData())


def test_augment_never_flips_and_adapts():
    aug = AdaptiveAugment(p=1.0, ops=("translation",), adaptive=False)
    x = torch.zeros(64, 1, 16, 16) - 1
    x[:, :, :, :4] = 1  # bright band on the left
    torch.manual_seed(0)
    y = aug(x)
    # translation moves the band at most 2 px; it never shows up on the right half (no horizontal flip)
    assert (y[:, :, :, 8:] <= -1 + 1e-6).all()
    ada = AdaptiveAugment(p=0.0, ada_kimg=0.001)
    ada.accumulate(torch.ones(8))  # D confident on reals -> overfitting -> raise p
    ada.update(8)
    assert ada.p > 0
    ada.accumulate(-torch.ones(8))
    ada.update(8)
    assert ada.p == 0.0


@pytest.mark.slow
def test_train_cli_on_nih_exports_a_loadable_model(nih64, tmp_path, monkeypatch):
    from services.common.findings import Condition
    from services.generator import registry
    from synthrad.cli.main import cli

    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [
        "train", "stylegan2", "--data", str(nih64), "--layout", "nih", "--views", "PA,AP", "--resolution", "64",
        "--out", str(out), "--max-steps", "2", "--batch", "4", "--device", "cpu", "--channel-base", "128",
        "--channel-max", "16", "--mapping-layers", "1", "--no-progress", "--model-id", "sg2-cli-test",
        "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["step"] == 2 and summary["stop"] == "max_steps"
    desc = json.loads((out / "export" / "sg2-cli-test.json").read_text())
    assert desc["family"] == "stylegan2" and desc["resolution"] == 64 and desc["training"]["num_images"] > 100
    assert (out / "export" / "sg2-cli-test-samples.png").exists()
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(out / "export"))
    g = registry.load_generator("sg2-cli-test", "eager", "cpu")
    img = g.generate([Condition.no_finding()], [0])
    assert img.shape == (1, 64, 64) and np.isfinite(img).all()
    # --resume continues from the checkpoint
    r = CliRunner().invoke(cli, [
        "train", "stylegan2", "--data", str(nih64), "--views", "PA,AP", "--out", str(out), "--resume",
        "--max-steps", "3", "--batch", "4", "--device", "cpu", "--channel-base", "128", "--channel-max", "16",
        "--mapping-layers", "1", "--no-progress", "--model-id", "sg2-cli-test", "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout[r.stdout.index("{"):])["step"] == 3
