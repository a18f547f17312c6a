"""StyleGAN2 training: exact resume, augmentation (no flips), export, and the CLI on the shared NIH data."""

import json

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from toy_data import ToyXrays

from services.generator.train.augment import AdaptiveAugment
from services.generator.train.stylegan2 import StyleGAN2Trainer, TrainConfig

NET = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16, d_channel_base=128,
           d_channel_max=16)


def cfg(out, **kw):
    base = dict(out=str(out), resolution=16, batch=4, device="cpu", net=NET, progress=False, snap_minutes=0,
                aug="fixed", aug_p=0.5, r1_interval=2, export=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _params(tr):
    return {f"{n}.{k}": v.detach().clone() for n, m in (("G", tr.G), ("D", tr.D), ("E", tr.G_ema))
            for k, v in m.state_dict().items()}


@pytest.mark.usefixtures("one_torch_thread")  # bit-exact resume; restores the thread count for later modules
def test_resume_continues_step_count_and_matches(tmp_path):
    straight = StyleGAN2Trainer(cfg(tmp_path / "a", max_steps=3), dataset=ToyXrays(states=2))
    straight.train()
    assert straight.step == 3 and straight.nimg == 12
    first = StyleGAN2Trainer(cfg(tmp_path / "b", max_steps=1), dataset=ToyXrays(states=2))
    first.train()
    assert (tmp_path / "b" / "checkpoint.pt").exists() and first.step == 1
    resumed = StyleGAN2Trainer(cfg(tmp_path / "b", max_steps=3, resume=True), dataset=ToyXrays(states=2))
    assert resumed.step == 1 and resumed.nimg == 4
    resumed.train()
    assert resumed.step == 3 and resumed.nimg == 12
    pa, pb = _params(straight), _params(resumed)
    assert pa.keys() == pb.keys()
    diff = max(float((pa[k].float() - pb[k].float()).abs().max()) for k in pa)
    assert diff == 0.0
    # the trained G differs from a fresh one (training did something)
    fresh = StyleGAN2Trainer(cfg(tmp_path / "c", max_steps=0), dataset=ToyXrays(states=2))
    assert any(not torch.equal(fresh.G.state_dict()[k], straight.G.state_dict()[k]) for k in fresh.G.state_dict())
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert {"loss_G", "loss_D", "img_s", "aug_p"} <= set(log[0])


def test_resume_refuses_other_architecture(tmp_path):
    StyleGAN2Trainer(cfg(tmp_path, max_steps=1), dataset=ToyXrays(states=2)).train()
    with pytest.raises(ValueError, match="different network config"):
        StyleGAN2Trainer(cfg(tmp_path, resume=True, net={**NET, "channel_max": 8}), dataset=ToyXrays(states=2))


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


def test_resume_mismatch_names_only_the_differing_fields(tmp_path):
    StyleGAN2Trainer(cfg(tmp_path, max_steps=1), dataset=ToyXrays(states=2)).train()
    with pytest.raises(ValueError) as ei:
        StyleGAN2Trainer(cfg(tmp_path, resume=True, net={**NET, "channel_max": 8}), dataset=ToyXrays(states=2))
    msg = str(ei.value)
    assert "channel_max: checkpoint 16, now 8" in msg and "use the same options or a new --out" in msg
    assert "z_dim" not in msg and "mapping_layers" not in msg and "d_channel_max" not in msg


def test_fresh_run_refuses_existing_checkpoint_unless_overwrite(tmp_path):
    from services.generator.train.common import RunFolderExists

    StyleGAN2Trainer(cfg(tmp_path, max_steps=1), dataset=ToyXrays(states=2)).train()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(RunFolderExists, match="--resume.*--overwrite"):
        StyleGAN2Trainer(cfg(tmp_path, max_steps=1), dataset=ToyXrays(states=2))
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    with pytest.raises(ValueError, match="exclude each other"):
        StyleGAN2Trainer(cfg(tmp_path, resume=True, overwrite=True), dataset=ToyXrays(states=2))
    tr = StyleGAN2Trainer(cfg(tmp_path, max_steps=1, overwrite=True), dataset=ToyXrays(states=2))
    assert tr.step == 0  # a new run, not the old one resumed
    tr.train()
    assert tr.step == 1 and (tmp_path / "checkpoint.pt").read_bytes() != before


def _cli(tmp_path, monkeypatch, *args):
    """Invoke ``synthrad train stylegan2`` with training replaced by a stub that records the config."""
    from services.generator.train import stylegan2
    from synthrad.cli.main import cli

    seen = {}
    monkeypatch.setattr(stylegan2, "train", lambda c: seen.setdefault("cfg", c) and {"step": 0})
    r = CliRunner().invoke(cli, ["train", "stylegan2", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                                 *args])
    return r, seen.get("cfg")


def test_cli_refuses_existing_out_without_resume_or_overwrite(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"old run")
    r, c = _cli(tmp_path, monkeypatch)
    assert r.exit_code == 2 and c is None
    assert "checkpoint.pt already exists" in r.output and "--resume" in r.output and "--overwrite" in r.output
    r, c = _cli(tmp_path, monkeypatch, "--resume", "--overwrite")
    assert r.exit_code == 2 and c is None and "exclude each other" in r.output
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == b"old run"
    r, c = _cli(tmp_path, monkeypatch, "--overwrite")
    assert r.exit_code == 0, r.output
    assert c.overwrite and not c.resume
    r, c = _cli(tmp_path, monkeypatch, "--resume")
    assert r.exit_code == 0, r.output
    assert c.resume and not c.overwrite


def test_cli_options_views_layout_resolution(tmp_path, monkeypatch):
    from services.common.datasets import LAYOUTS
    from synthrad.cli import train_diffusion, train_stylegan2

    r, c = _cli(tmp_path, monkeypatch)
    assert r.exit_code == 0, r.output
    assert c.views == ("PA",) and c.resolution == 64 and c.layout == "nih"
    assert "training on views: PA; the stylegan2 default" in r.stderr
    r, c = _cli(tmp_path, monkeypatch, "--views", "pa, ap", "--resolution", "128", "--layout", "chexpert")
    assert r.exit_code == 0, r.output
    assert c.views == ("PA", "AP") and c.resolution == 128 and c.layout == "chexpert"
    assert "training on views: PA, AP" in r.stderr and "default" not in r.stderr
    r, c = _cli(tmp_path, monkeypatch, "--views", "all")
    assert c.views is None and "training on views: all" in r.stderr
    r, _ = _cli(tmp_path, monkeypatch, "--layout", "dicom")
    assert r.exit_code == 2 and "dicom" in r.output
    r, _ = _cli(tmp_path, monkeypatch, "--resolution", "96")
    assert r.exit_code == 2 and "96" in r.output
    # the two train commands declare --layout / --resolution the same way
    for cmd in (train_stylegan2.command, train_diffusion.command):
        opts = {p.name: p for p in cmd.params}
        assert tuple(opts["layout"].type.choices) == tuple(LAYOUTS)
        assert opts["resolution"].type is click.INT and opts["resolution"].default == 64


# -- shared helpers used by both trainers -----------------------------------------------------------------
def test_resolve_device_validates(tmp_path, monkeypatch):
    from services.common.config import get_settings, resolve_device
    from services.generator.backends import resolve_device as backends_resolve_device

    assert backends_resolve_device is resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == resolve_device("auto") == resolve_device(" AUTO ") == resolve_device(None) == "cpu"
    assert resolve_device("cpu") == "cpu"
    for bad in ("gpu", "cuda:x", "cuda:", "mps", "cpu:0", "cuda0"):
        with pytest.raises(ValueError, match="unknown device"):
            resolve_device(bad)
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device(spec)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        StyleGAN2Trainer(cfg(tmp_path / "run", device="cuda"), dataset=ToyXrays(states=2))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("CUDA:1") == "cuda:1"
    with pytest.raises(ValueError, match="only 2 CUDA GPU"):
        resolve_device("cuda:2")
    monkeypatch.setenv("SYNTHRAD_DEVICE", "auto")
    get_settings.cache_clear()
    try:
        assert get_settings().resolved_device() == "cuda"
    finally:
        get_settings.cache_clear()


def test_grid_conditions_one_order_full_labels(tmp_path):
    from PIL import Image, ImageDraw, ImageFont

    from services.common.findings import FINDINGS, Condition
    from services.generator.train import common, diffusion, stylegan2

    assert stylegan2.grid_conditions is common.grid_conditions is diffusion.grid_conditions
    rows = common.grid_conditions()
    assert [n for n, _ in rows] == ["unconditional", "no finding", "atelectasis", "lung opacity", "pleural effusion",
                                    "enlarged cardiac silhouette"]
    assert rows[0][1] == Condition() and rows[1][1] == Condition.no_finding()
    for (_, c), f in zip(rows[2:], FINDINGS):
        assert c.present() == [f] and sorted(c.absent()) == sorted(g for g in FINDINGS if g != f)
    labels = [n for n, _ in rows]
    draw, font = ImageDraw.Draw(Image.new("L", (1, 1))), ImageFont.load_default()
    for h in (16, 64):
        wrapped = common._wrap_labels(labels, draw, font, h)
        assert [" ".join(t.split()) for t in wrapped] == labels  # wrapped, never truncated
        if h == 64:
            assert "\n" in wrapped[-1]
        p = common.save_grid([np.zeros((2, h, h), np.float32)] * len(rows), tmp_path / f"g{h}.png", labels=labels)
        im = np.asarray(Image.open(p))
        label_col = im[:, :im.shape[1] - 2 * (h + 2) - 2]
        assert (label_col < 128).any()  # text drawn


def test_resume_loads_only_safe_checkpoints(tmp_path):
    """A checkpoint that pickles an object (here one whose unpickling would run a command) is refused, not
    unpickled; synthrad's own checkpoints load with torch.load(weights_only=True)."""
    import os

    import torch

    from services.generator.train.common import CHECKPOINT, UnsafeCheckpoint, load_checkpoint, save_checkpoint

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'owned'}",))

    bad = tmp_path / "bad" / CHECKPOINT
    bad.parent.mkdir()
    torch.save({"step": 1, "x": Evil()}, bad)
    with pytest.raises(UnsafeCheckpoint):
        load_checkpoint(bad)
    assert not (tmp_path / "owned").exists()
    with pytest.raises(UnsafeCheckpoint):
        StyleGAN2Trainer(cfg(tmp_path / "bad", resume=True), dataset=ToyXrays(states=2))
    assert not (tmp_path / "owned").exists()
    import numpy as np

    good = save_checkpoint(tmp_path / "good" / CHECKPOINT, {"a": np.arange(3), "p": tmp_path, "t": torch.ones(2)})
    st = load_checkpoint(good)
    assert st["p"] == str(tmp_path) and st["a"].tolist() == [0, 1, 2]
