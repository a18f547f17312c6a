"""``--max-minutes`` counts everything: the loop leaves room for the final checkpoint, grid and export, as
measured in the run (services/generator/train/common.py TimeBudget)."""

import time

import pytest
from toy_data import ToyXrays

from services.generator.train import diffusion
from services.generator.train.common import TimeBudget, timed
from services.generator.train.diffusion import DiffusionTrainConfig, DiffusionTrainer



pytestmark = pytest.mark.usefixtures("one_torch_thread")  # restores the thread count afterwards

def test_budget_reserves_the_measured_finishing_costs():
    b = TimeBudget(1.0, safety=1.5)
    assert b.finish_cost({"grid": 4.0, "save": 1.0}) == pytest.approx(7.5)  # priors before anything is measured
    b.record("grid", 10.0)
    b.record("grid", 2.0)  # the largest cost seen counts
    assert b.finish_cost({"grid": 4.0, "save": 1.0}) == pytest.approx(16.5)
    assert not b.exceeded(finish=0.0) and b.exceeded(finish=60.0)
    assert b.allows("snapshot", finish=0.0, prior=1.0) and not b.allows("snapshot", finish=59.0, prior=1.0)
    with timed(b, "export"):
        time.sleep(0.01)
    assert b.costs["export"] >= 0.01
    assert not TimeBudget(None).exceeded(finish=1e9)


def test_diffusion_run_ends_within_its_budget_including_a_slow_final_grid(tmp_path, monkeypatch):
    """Each grid costs 4 s here (a slow sampler, as a 64 px grid is on a CPU); a 0.75 min (45 s) budget must
    hold the training, the grids and the export. (Before: the loop ran to the limit and the final grid and
    export came on top.)"""
    real = diffusion.save_grid

    def slow_grid(*a, **kw):
        time.sleep(4.0)
        return real(*a, **kw)

    monkeypatch.setattr(diffusion, "save_grid", slow_grid)
    import diffusers  # noqa: F401  - imported up front: the import is not what this test measures
    cfg = DiffusionTrainConfig(out=str(tmp_path), resolution=16, preset="tiny", model_id="ddpm-budget", batch=2,
                               max_minutes=0.75, grid_every=0, ckpt_every=0, grid_seeds=1, grid_steps=1,
                               progress=False, device="cpu")
    t0 = time.monotonic()
    desc = DiffusionTrainer(cfg, dataset=ToyXrays()).fit()
    wall = time.monotonic() - t0
    assert desc["training"]["steps"] > 0 and (tmp_path / "ddpm-budget.safetensors").exists()
    assert (tmp_path / "ddpm-budget-grid.png").exists() and (tmp_path / "grids" / "step-000000.png").exists()
    assert wall <= 0.75 * 60 + 2.0, wall  # a 2 s allowance for the last step and process noise
