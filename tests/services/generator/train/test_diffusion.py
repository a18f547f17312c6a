"""DDPM training: exact resume, export (safetensors + descriptor) loadable by the family loader, time budget,
condition dropout, and the ``synthrad train diffusion`` command on the shared NIH data (tiny config)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from repo_paths import NIH64 as NIH
from toy_data import ToyXrays

from services.common.findings import Condition
from services.generator.base import GenerationParams
from services.generator.train.diffusion import DiffusionTrainConfig, DiffusionTrainer, drop_conditions, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(out, **kw) -> DiffusionTrainConfig:
    base = dict(out=str(out), resolution=16, preset="tiny", model_id="ddpm-test", batch=4, max_steps=6,
                grid_every=0, ckpt_every=2, grid_seeds=2, grid_steps=2, progress=False, device="cpu", log_every=1)
    base.update(kw)
    return DiffusionTrainConfig(**base)


def test_resume_continues_exactly(tmp_path):
    data = ToyXrays()
    straight = DiffusionTrainer(_cfg(tmp_path / "a", max_steps=6), dataset=data)
    straight.fit()
    first = DiffusionTrainer(_cfg(tmp_path / "b", max_steps=3), dataset=data)
    first.fit()
    assert (tmp_path / "b" / "checkpoint.pt").exists()
    resumed = DiffusionTrainer(_cfg(tmp_path / "b", max_steps=6), dataset=data)
    assert resumed.resume() and resumed.step == 3 and resumed.nimg == 12
    resumed.fit()
    assert resumed.step == 6
    for k, v in straight.ema.state_dict().items():
        assert torch.equal(v, resumed.ema.state_dict()[k]), k
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]


def test_export_is_loadable_and_generates(tmp_path):
    from services.generator.models.ddpm.loader import load
    from services.generator.registry import sha256_file

    desc = train(_cfg(tmp_path, max_steps=2), dataset=ToyXrays())
    weights = tmp_path / "ddpm-test.safetensors"
    on_disk = json.loads((tmp_path / "ddpm-test.json").read_text())
    assert on_disk == desc and desc["family"] == "ddpm" and desc["sha256"] == sha256_file(weights)
    assert desc["training"]["steps"] == 2 and desc["training"]["images_seen"] == 8
    assert (tmp_path / "ddpm-test-grid.png").exists()
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float16 for v in load_file(str(weights)).values() if v.is_floating_point())
    g = load(desc, weights, "eager", "cpu")
    out = g.generate([Condition.from_findings(["pleural_effusion"])], [1], GenerationParams(steps=3))
    assert out.shape == (1, 16, 16) and np.isfinite(out).all()


def test_time_budget_stops_and_exports(tmp_path):
    desc = train(_cfg(tmp_path, max_steps=None, max_minutes=0.002), dataset=ToyXrays())
    assert desc["training"]["steps"] < 1000
    assert (tmp_path / "ddpm-test.safetensors").exists()


def test_condition_dropout():
    torch.manual_seed(0)
    codes = torch.zeros(4000, 4, dtype=torch.long)
    out = drop_conditions(codes, p_uncond=0.1, p_drop_finding=0.15)
    all_null = (out == 2).all(dim=1).float().mean().item()
    per_finding = (out == 2).float().mean().item()
    assert 0.08 < all_null < 0.13
    assert 0.2 < per_finding < 0.28  # 1 - 0.9 * 0.85 = 0.235
    assert set(out.unique().tolist()) <= {0, 2}


@pytest.mark.skipif(not (NIH / "labels.csv").exists(), reason="shared NIH data not present")
def test_cli_trains_on_real_images(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from services.common.config import get_settings
    from synthrad.cli.train_diffusion import command

    monkeypatch.setenv("SYNTHRAD_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        args = ["--data", str(NIH), "--layout", "nih", "--resolution", "16", "--out", str(tmp_path / "run"),
                "--preset", "tiny", "--batch", "4", "--grid-every", "0", "--no-progress", "--device", "cpu",
                "--model-id", "ddpm-cli"]
        res = CliRunner().invoke(command, args + ["--max-steps", "2"])
        assert res.exit_code == 0, res.output
        assert (tmp_path / "run" / "ddpm-cli.safetensors").exists()
        desc = json.loads((tmp_path / "run" / "ddpm-cli.json").read_text())
        assert desc["training"]["images"] > 100 and desc["training"]["split"] == "train"
        res = CliRunner().invoke(command, args + ["--max-steps", "3", "--resume"])
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / "run" / "ddpm-cli.json").read_text())["training"]["steps"] == 3
        res = CliRunner().invoke(command, ["--data", str(NIH), "--out", str(tmp_path / "x")])
        assert res.exit_code != 0 and "--max-steps or --max-minutes" in res.output
    finally:
        get_settings.cache_clear()


def test_ema_is_the_shared_warmup_lerp(tmp_path):
    """One step's EMA equals ``beta * ema + (1 - beta) * model`` with beta = min(decay, (1+s)/(10+s))."""
    tr = DiffusionTrainer(_cfg(tmp_path, ema_decay=0.5), dataset=ToyXrays())
    tr.step = 20  # warm-up beta 21/30 = 0.7 > decay -> beta = decay
    before = {k: v.clone() for k, v in tr.ema.state_dict().items()}
    tr.train_step()
    model = tr.model.state_dict()
    for k, v in tr.ema.named_parameters():
        torch.testing.assert_close(v, 0.5 * before[k] + 0.5 * model[k])


def test_fresh_run_refuses_existing_checkpoint_unless_overwrite(tmp_path):
    from services.generator.train.common import RunFolderExists

    train(_cfg(tmp_path, max_steps=2), dataset=ToyXrays())
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(RunFolderExists, match="--resume.*--overwrite"):
        train(_cfg(tmp_path, max_steps=4), dataset=ToyXrays())
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert train(_cfg(tmp_path, max_steps=3), dataset=ToyXrays(), resume=True)["training"]["steps"] == 3
    desc = train(_cfg(tmp_path, max_steps=1, overwrite=True), dataset=ToyXrays())
    assert desc["training"]["steps"] == 1  # started over


def test_resume_mismatch_names_only_the_differing_fields(tmp_path):
    DiffusionTrainer(_cfg(tmp_path, max_steps=1), dataset=ToyXrays()).fit()
    other = DiffusionTrainer(_cfg(tmp_path, resolution=32), dataset=ToyXrays(res=32))
    with pytest.raises(ValueError) as ei:
        other.resume()
    msg = str(ei.value)
    assert "sample_size: checkpoint 16, now 32" in msg and "use the same options or a new --out" in msg
    assert "block_out_channels" not in msg and "layers_per_block" not in msg


def _cli(tmp_path, monkeypatch, *args, steps=("--max-steps", "1")):
    """Invoke ``synthrad train diffusion`` with training replaced by a stub that records its arguments."""
    from click.testing import CliRunner

    from services.generator.train import diffusion
    from synthrad.cli.train_diffusion import command

    seen = {}

    def fake_train(cfg, resume=False):
        seen.update(cfg=cfg, resume=resume)
        return {"weights": "w", "model_id": "m", "training": {"parameters": 1, "steps": 0, "train_seconds": 0,
                                                              "hardware": "cpu"}}

    monkeypatch.setattr(diffusion, "train", fake_train)
    res = CliRunner().invoke(command, ["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "tiny",
                                       *steps, *args])
    return res, seen


def test_cli_refuses_existing_out_without_resume_or_overwrite(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"old run")
    res, seen = _cli(tmp_path, monkeypatch)
    assert res.exit_code == 2 and not seen
    assert "checkpoint.pt already exists" in res.output and "--resume" in res.output and "--overwrite" in res.output
    res, seen = _cli(tmp_path, monkeypatch, "--resume", "--overwrite")
    assert res.exit_code == 2 and not seen and "exclude each other" in res.output
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == b"old run"
    res, seen = _cli(tmp_path, monkeypatch, "--overwrite")
    assert res.exit_code == 0, res.output
    assert seen["cfg"].overwrite and not seen["resume"]
    res, seen = _cli(tmp_path, monkeypatch, "--resume")
    assert res.exit_code == 0, res.output
    assert seen["resume"] and not seen["cfg"].overwrite


def test_cli_views_layout_resolution(tmp_path, monkeypatch):
    res, seen = _cli(tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    assert seen["cfg"].views == "all" and seen["cfg"].resolution == 64 and seen["cfg"].layout == "nih"
    assert "training on views: all (every view position); the diffusion default" in res.stderr
    res, seen = _cli(tmp_path, monkeypatch, "--views", "pa,AP", "--layout", "mimic", "--resolution", "32")
    assert res.exit_code == 0, res.output
    assert seen["cfg"].views == "PA,AP" and seen["cfg"].layout == "mimic" and seen["cfg"].resolution == 32
    assert "training on views: PA, AP" in res.stderr and "default" not in res.stderr
    res, seen = _cli(tmp_path, monkeypatch, "--layout", "dicom")
    assert res.exit_code == 2 and not seen
    res, seen = _cli(tmp_path, monkeypatch, "--resolution", "17")
    assert res.exit_code == 2 and not seen and "divisible" in res.output
