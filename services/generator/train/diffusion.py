"""Training of the class-conditional pixel DDPM (``synthrad train diffusion``).

* Noise-prediction (epsilon) MSE under the model's ``DDPMScheduler`` (cosine schedule, 1000 steps).
* Classifier-free guidance training: the whole condition is dropped to "all unspecified" with
  probability ``p_uncond``; each finding is also dropped to "unspecified" on its own with
  ``p_drop_finding`` (so partial conditions are meaningful at sampling time).
* EMA of the weights (warm-up ``min(decay, (1+s)/(10+s))``); the EMA model is what is exported.
* Exact resume: model, EMA, optimizer, step, images seen, RNG state and the batch sampler's state live in
  ``OUT/checkpoint.pt`` (atomic writes); ``--resume`` continues from it. A fresh run refuses to replace an
  existing checkpoint unless ``overwrite`` is set.
* ``--max-minutes`` budget: training stops in time to save, export the EMA weights (fp16 safetensors +
  JSON descriptor with sha256) and a final per-condition sample grid.
* Progress bar (tqdm) with loss and images/s; ``OUT/log.jsonl`` with the same numbers; sample grids
  ``OUT/grids/step-XXXXXX.png`` (one row per condition, the same seeds in every grid).
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from services.common.config import resolve_device
from services.common.logging import get_logger
from services.generator.models.ddpm.model import (DEFAULT_SCHEDULE, ConditionalUNet, count_parameters, save_weights,
                                                  unet_config)
from services.generator.models.ddpm.sampling import sample
from services.generator.train.common import (CHECKPOINT, Acceleration, InfiniteBatches, JsonlLog, TimeBudget,
                                             check_resume_config, check_run_folder, ema_update, ema_warmup_beta,
                                             enable_tf32, grid_conditions, load_checkpoint, process_age_s, rng_state,
                                             save_checkpoint, save_grid, seed_everything, set_rng_state, timed)
from services.generator.train.naming import export_model_id
from services.generator.train.state import (TrainingState, adam_moments, open_shipped, restore_adam, save_state,
                                            state_file_name)

log = get_logger(__name__)


@dataclass
class DiffusionTrainConfig:
    out: str
    data: str | None = None
    layout: str = "nih"
    views: str = "all"
    split: str | None = "train"
    split_by: str = "patient"  # "recorded": the dataset's own splits; "patient": patient-disjoint train / test
    resolution: int = 64
    preset: str = "cxr64"
    model_id: str | None = None  # default: ddpm-<run folder name>; a registered id needs replace
    resume_from: str | None = None  # a shipped model (id or descriptor path) whose training state to continue
    replace: bool = False
    batch: int = 64
    lr: float = 2e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    p_uncond: float = 0.1
    p_drop_finding: float = 0.15
    augment: bool = True
    max_steps: int | None = None
    max_minutes: float | None = None
    budget_from_process_start: bool = False  # the CLI: --max-minutes counts the process's start-up too
    grid_every: int = 1000
    ckpt_every: int = 1000
    log_every: int = 50
    grid_sampler: str = "dpmpp"
    grid_steps: int = 20
    grid_guidance: float = 2.0
    grid_seeds: int = 8
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None  # None: auto (bf16 on CUDA) — see common.Acceleration
    channels_last: bool | None = None
    compile: bool | None = None
    fused: bool | None = None
    progress: bool = True
    overwrite: bool = False  # a fresh run may replace an existing OUT/checkpoint.pt (else refused unless resumed)
    schedule: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCHEDULE))


def drop_conditions(codes: torch.Tensor, p_uncond: float, p_drop_finding: float) -> torch.Tensor:
    """Condition dropout for classifier-free guidance (uses the global torch RNG, which is checkpointed)."""
    codes = codes.clone()
    if p_drop_finding > 0:
        drop = torch.rand(codes.shape, device=codes.device) < p_drop_finding
        codes[drop] = 2
    if p_uncond > 0:
        drop_all = torch.rand(codes.shape[0], device=codes.device) < p_uncond
        codes[drop_all] = 2
    return codes


def augment_batch(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Small random integer translations (edge-replicated), per image. No flips: anatomy is lateralised."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, mode="replicate")
    sy = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device)
    sx = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device)
    rows = (sy[:, None] + torch.arange(h, device=x.device)[None]).view(n, 1, h, 1).expand(n, 1, h, pad.shape[3])
    tmp = torch.gather(pad, 2, rows)
    cols = (sx[:, None] + torch.arange(w, device=x.device)[None]).view(n, 1, 1, w).expand(n, 1, h, w)
    return torch.gather(tmp, 3, cols)


def build_dataset(cfg: DiffusionTrainConfig, resolution: int | None = None):
    from services.common.datasets import XrayDataset, load_records

    if not cfg.data:
        raise ValueError("no training data given (--data PATH)")
    views = None if cfg.views in (None, "", "all") else cfg.views
    records = load_records(cfg.data, cfg.layout, views=views, split=cfg.split, split_by=cfg.split_by)
    if not records:
        raise ValueError(f"no images found in {cfg.data} (layout {cfg.layout}, views {cfg.views}, split {cfg.split})")
    return XrayDataset(records, resolution or cfg.resolution, cache_dir="auto", progress=cfg.progress)


class DiffusionTrainer:
    def __init__(self, cfg: DiffusionTrainConfig, dataset=None):
        self.budget = TimeBudget(cfg.max_minutes, already_s=process_age_s() if cfg.budget_from_process_start else 0.0)  # counts from here: imports, data loading and the end included
        from diffusers import DDPMScheduler

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        enable_tf32(self.device)
        self.accel = Acceleration.resolve(self.device, cfg.amp, cfg.channels_last, cfg.compile, cfg.fused)
        self.shipped = open_shipped(cfg.resume_from, "ddpm") if cfg.resume_from else None
        self.model_id = export_model_id(cfg.model_id, "ddpm", self.out, cfg.replace,
                                        continues=self.shipped.descriptor["model_id"] if self.shipped else None)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(cfg.seed)
        if self.shipped is not None:
            sh_cfg = self.shipped.descriptor["config"]
            self.unet_kwargs, self.schedule = dict(sh_cfg["unet"]), dict(sh_cfg.get("schedule") or cfg.schedule)
        else:
            self.unet_kwargs, self.schedule = unet_config(cfg.preset, cfg.resolution), dict(cfg.schedule)
        self.resolution = int(self.unet_kwargs["sample_size"])
        self.dataset = dataset if dataset is not None else build_dataset(cfg, self.resolution)
        self.model = ConditionalUNet(self.unet_kwargs).to(self.device, memory_format=self.accel.memory_format())
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     **({"fused": True} if self.accel.fused else {}))
        self.noise_sched = DDPMScheduler(**self.schedule)
        self.alphas_cumprod = self.noise_sched.alphas_cumprod.to(self.device)
        self.batches = InfiniteBatches(self.dataset, cfg.batch, self.device, seed=cfg.seed)
        self.step = 0
        self.nimg = 0
        self.train_seconds = 0.0
        self.resumed = False  # True once resume() loaded OUT/checkpoint.pt
        self._saved = False  # True once this trainer wrote OUT/checkpoint.pt itself
        self.log = JsonlLog(self.out / "log.jsonl")
        self.forward = torch.compile(self.model) if self.accel.compile else self.model

    def continue_shipped(self) -> None:
        """Start from a shipped model: its EMA weights seed both the EMA and the raw model (an EMA restart);
        Adam's second moments, the step and images seen come from its training state (:mod:`.state`)."""
        from services.generator.models.ddpm.model import load_weights

        sh = self.shipped
        load_weights(self.ema, sh.weights)
        self.model.load_state_dict(self.ema.state_dict())
        if sh.state is None:
            log.warning("%s ships no training state: Adam starts from scratch", sh.descriptor["model_id"])
            return
        st = sh.state
        self.step, self.nimg, self.train_seconds = st.step, st.nimg, st.train_seconds
        restore_adam(self.opt, self.model.named_parameters(), "model", st.tensors, st.step)
        self.batches.gen.manual_seed(self.cfg.seed + self.step)
        log.info("continuing %s from its training state at step %d", sh.descriptor["model_id"], self.step)

    def training_state(self) -> TrainingState:
        return TrainingState("ddpm", self.step, self.nimg, self.train_seconds,
                             extra={"unet": self.unet_kwargs, "schedule": self.schedule, "batch": self.cfg.batch,
                                    "lr": self.cfg.lr},
                             tensors=adam_moments(self.opt, self.model.named_parameters(), "model"))

    # ---- checkpoint ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "step": self.step, "nimg": self.nimg, "train_seconds": self.train_seconds,
                "config": asdict(self.cfg), "unet": self.unet_kwargs, "rng": rng_state(),
                "batches": self.batches.state_dict()}

    def save(self) -> Path:
        with timed(self.budget, "save"):
            path = save_checkpoint(self.out / CHECKPOINT, self.state_dict())
        self._saved = True
        return path

    def resume(self) -> bool:
        path = self.out / CHECKPOINT
        if not path.exists():
            return False
        st = load_checkpoint(path, map_location=self.device)
        check_resume_config(path, "UNet config", st["unet"], self.unet_kwargs)
        self.model.load_state_dict(st["model"])
        self.ema.load_state_dict(st["ema"])
        self.opt.load_state_dict(st["opt"])
        self.step, self.nimg = int(st["step"]), int(st["nimg"])
        self.train_seconds = float(st.get("train_seconds", 0.0))
        set_rng_state(st["rng"])
        self.batches.load_state_dict(st["batches"])
        self.resumed = True
        log.info("resumed diffusion training", extra={"step": self.step, "checkpoint": str(path)})
        return True

    # ---- one step -----------------------------------------------------------------------------------
    def train_step(self) -> torch.Tensor:
        """One optimizer step; returns the loss as a device tensor (reading it would wait for the GPU)."""
        cfg = self.cfg
        x0, codes = self.batches.next()
        x0 = x0.float()
        if cfg.augment:
            x0 = augment_batch(x0, max(1, self.resolution // 16))
        x0 = x0.contiguous(memory_format=self.accel.memory_format())
        codes = drop_conditions(codes.long(), cfg.p_uncond, cfg.p_drop_finding)
        n = x0.shape[0]
        t = torch.randint(0, self.noise_sched.config.num_train_timesteps, (n,), device=self.device)
        noise = torch.randn_like(x0)
        a = self.alphas_cumprod[t].view(n, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if self.noise_sched.config.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        else:
            target = noise
        lr = cfg.lr * min(1.0, (self.step + 1) / max(1, cfg.warmup_steps))
        for g in self.opt.param_groups:
            g["lr"] = lr
        with self.accel.autocast(self.device):
            pred = self.forward(xt, t.float(), codes)
        loss = F.mse_loss(pred.float(), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip, foreach=True)
        self.opt.step()
        ema_update(self.ema, self.model, ema_warmup_beta(self.step, cfg.ema_decay))
        self.step += 1
        self.nimg += n
        return loss.detach()

    # ---- samples ------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self, path: Path, model: ConditionalUNet | None = None) -> Path:
        cfg = self.cfg
        model = (model or self.ema).eval()
        rows, labels = [], []
        seeds = list(range(cfg.grid_seeds))

        def denoise(x, t, c):
            return model(x, t, c)

        with timed(self.budget, "grid"):
            for label, cond in grid_conditions():
                codes = torch.tensor([cond.codes()] * len(seeds), dtype=torch.long)
                x = sample(denoise, codes, seeds, resolution=self.resolution, schedule=self.schedule,
                           sampler=cfg.grid_sampler, steps=cfg.grid_steps, guidance=cfg.grid_guidance,
                           device=self.device)
                rows.append(((x[:, 0].float().cpu().numpy() + 1.0) * 0.5).clip(0, 1))
                labels.append(label)
            return save_grid(rows, path, labels=labels)

    # ---- export -------------------------------------------------------------------------------------
    def export(self, grid: Path | None = None) -> dict:
        """EMA weights -> ``OUT/<model_id>.safetensors`` (fp16), the training state ->
        ``OUT/<model_id>.train.safetensors``, and the ``OUT/<model_id>.json`` descriptor."""
        from services.generator.registry import sha256_file

        cfg, mid = self.cfg, self.model_id
        with timed(self.budget, "export"):
            weights = self.out / f"{mid}.safetensors"
            save_weights(self.ema, weights, metadata={"model_id": mid, "step": str(self.step)})
            state = save_state(self.out / state_file_name(mid), self.training_state())
            if torch.device(self.device).type == "cuda":
                hardware = torch.cuda.get_device_name(torch.device(self.device))
            else:
                hardware = f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s)"
            desc = {
                "model_id": mid,
                "family": "ddpm",
                "weights": weights.name,
                "sha256": sha256_file(weights),
                "resolution": self.resolution,
                "card": f"{mid}.md",
                "description": "Class-conditional pixel DDPM (diffusers UNet2DModel + findings embedding, "
                               "classifier-free guidance)",
                "config": {
                    "unet": self.unet_kwargs,
                    "schedule": dict(self.schedule),
                    "defaults": {"sampler": "dpmpp", "steps": 20, "guidance": cfg.grid_guidance},
                },
                "training": {
                    "data": Path(cfg.data).name if cfg.data else None, "layout": cfg.layout, "views": cfg.views,
                    "split": cfg.split, "split_by": cfg.split_by, "images": len(self.dataset), "steps": self.step,
                    "images_seen": self.nimg, "batch": cfg.batch, "lr": cfg.lr, "ema_decay": cfg.ema_decay,
                    "p_uncond": cfg.p_uncond, "p_drop_finding": cfg.p_drop_finding,
                    "train_seconds": round(self.train_seconds, 1), "device": self.device, "hardware": hardware,
                    "torch": torch.__version__, "parameters": count_parameters(self.ema),
                    "acceleration": self.accel.describe(),
                    "continued_from": self.shipped.descriptor["model_id"] if self.shipped else None,
                },
                "training_state": state,
            }
            if grid is not None:
                desc["samples"] = Path(grid).name
            if cfg.replace:
                desc["replaces"] = mid
            (self.out / f"{mid}.json").write_text(json.dumps(desc, indent=2) + "\n")
        return desc

    # ---- loop ---------------------------------------------------------------------------------------
    def finish_cost(self) -> float:
        """What the end of the run costs (checkpoint, grid, export), as last measured in this run."""
        return self.budget.finish_cost({"save": 2.0, "grid": 10.0, "export": 2.0})

    def fit(self, resume: bool = False) -> dict:
        cfg, budget = self.cfg, self.budget
        if resume:
            self.resume()
        if not (self.resumed or self._saved):  # a fresh run would replace another run's OUT/checkpoint.pt
            check_run_folder(self.out, overwrite=cfg.overwrite)
        if self.shipped is not None and not self.resumed:
            self.continue_shipped()
        if cfg.max_minutes:
            # the first grid measures what the last one will cost, so the budget holds it (and shows the start)
            self.sample_grid(self.out / "grids" / f"step-{self.step:06d}.png")
        total = cfg.max_steps
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc="diffusion", unit="step", dynamic_ncols=True)
        t_last, n_last = time.monotonic(), self.nimg
        loss_ema = None
        losses: list[torch.Tensor] = []
        stop = "max_steps"
        self.model.train()
        try:
            while True:
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    break
                if budget.exceeded(self.finish_cost()):
                    stop = "max_minutes"
                    log.info("time budget reached", extra={"step": self.step, "minutes": cfg.max_minutes})
                    break
                t0 = time.monotonic()
                losses.append(self.train_step())
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == 1:
                    vals = torch.stack(losses).float().tolist()  # the loop's one host sync
                    losses.clear()
                    if not all(math.isfinite(v) for v in vals):
                        raise FloatingPointError(f"training loss became non-finite by step {self.step}")
                    for v in vals:
                        loss_ema = v if loss_ema is None else 0.98 * loss_ema + 0.02 * v
                    now = time.monotonic()
                    ips = (self.nimg - n_last) / max(now - t_last, 1e-9)
                    t_last, n_last = now, self.nimg
                    self.log.write(step=self.step, nimg=self.nimg, loss=vals[-1], loss_avg=loss_ema, img_per_s=ips,
                                   lr=self.opt.param_groups[0]["lr"], elapsed_s=budget.elapsed())
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss_ema:.4f}", img_s=f"{ips:.0f}")
                self.train_seconds += time.monotonic() - t0
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and budget.allows("save", self.finish_cost()):
                    self.save()
                if (cfg.grid_every and self.step % cfg.grid_every == 0
                        and budget.allows("grid", self.finish_cost(), prior=10.0)):
                    self.sample_grid(self.out / "grids" / f"step-{self.step:06d}.png")
                    self.model.train()
        finally:
            if bar is not None:
                bar.close()
        self.save()
        grid = self.out / f"{self.model_id}-grid.png"
        if budget.allows("grid", finish=self.budget.finish_cost({"export": 2.0})):
            self.sample_grid(grid)
        else:  # the weights matter more than the picture: export first, a grid only if time is left
            log.warning("budget too short for the final sample grid before the export",
                        extra={"grid_s": round(budget.costs.get("grid", 0.0), 1)})
            grid = None
        desc = self.export(grid=grid)
        (self.out / "summary.json").write_text(json.dumps(
            {"model_id": self.model_id, "step": self.step, "stop": stop, "wall_seconds": round(budget.elapsed(), 1),
             "costs_s": {k: round(v, 2) for k, v in budget.costs.items()}}, indent=2))
        log.info("diffusion training done", extra={"step": self.step, "out": str(self.out), "grid": str(grid),
                                                   "wall_s": round(budget.elapsed(), 1)})
        return desc


def train(cfg: DiffusionTrainConfig, resume: bool = False, dataset=None) -> dict:
    """Train (or continue) and export; returns the descriptor written to ``OUT/<model_id>.json``."""
    return DiffusionTrainer(cfg, dataset=dataset).fit(resume=resume)
