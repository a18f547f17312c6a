"""Train the conditional StyleGAN2 (``synthrad train stylegan2``).

Losses: non-saturating logistic (G: softplus(-D(G(z,c),c)); D: softplus(D(fake)) + softplus(-D(real))),
lazy R1 on reals every ``r1_interval`` (16) steps weighted by ``gamma/2 * interval`` (gamma default: the
NVlabs heuristic 0.0002 * R^2 / batch), EMA generator (half-life ``ema_kimg``, ramp-up 0.05), style mixing,
ADA-style differentiable augmentation with an adaptive probability (no flips), condition dropout (each
finding's state is replaced by "unspecified" with probability ``p_uncond`` so that state is learnable),
``w_avg`` tracked with beta 0.995. Path-length regularisation is not used (as in NVlabs' small-resolution
configs). Exact resume: checkpoints hold G, D, G_ema, both optimisers, step/nimg, augmentation state, the data
sampler state and all RNG states.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from services.common.config import resolve_device
from services.common.findings import Condition
from services.common.logging import get_logger
from services.generator.models.stylegan2.loader import save_weights, seed_inputs
from services.generator.models.stylegan2.network import (Discriminator, Generator, GeneratorExport, StyleGAN2Config,
                                                         count_params, encode_conditions)

from .augment import AdaptiveAugment
from .common import (CHECKPOINT, Acceleration, InfiniteBatches, JsonlLog, TimeBudget, check_resume_config,
                     check_run_folder, ema_beta, ema_update, enable_tf32, grid_conditions, load_checkpoint,
                     process_age_s, rng_state, save_checkpoint, save_grid, seed_everything, set_rng_state, timed)
from .naming import export_model_id
from .state import TrainingState, adam_moments, net_tensors, open_shipped, restore_adam, save_state, state_file_name

log = get_logger(__name__)

GRID_SEEDS = tuple(range(8))


@dataclass
class TrainConfig:
    out: str
    data: str | None = None
    layout: str = "nih"
    views: tuple[str, ...] | None = ("PA",)  # None: every view
    split: str | None = "train"
    split_by: str = "patient"  # "recorded": the dataset's own splits; "patient": patient-disjoint train / test
    resolution: int = 64
    resume: bool = False
    overwrite: bool = False  # start a fresh run over an existing OUT/checkpoint.pt (else refused unless resume)
    resume_from: str | None = None  # a shipped model (id or descriptor path) whose training state to continue
    replace: bool = False  # export under an id that is already registered (the new export takes its place)
    kimg: float = 1000.0
    max_minutes: float | None = None
    budget_from_process_start: bool = False  # the CLI: --max-minutes counts the process's start-up too
    max_steps: int | None = None
    batch: int = 32
    device: str = "auto"
    lr_g: float = 0.0025
    lr_d: float = 0.0025
    gamma: float | None = None
    r1_interval: int = 16
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    style_mixing: float = 0.9
    p_uncond: float = 0.15
    aug: str = "ada"  # ada | fixed | none
    aug_p: float = 0.0
    ada_target: float = 0.6
    ada_kimg: float = 100.0
    snap_minutes: float = 5.0
    log_every: int = 10  # steps between log lines (the only host syncs of the loop)
    seed: int = 0
    model_id: str | None = None  # default: stylegan2-<run folder name>
    net: dict = field(default_factory=dict)  # StyleGAN2Config overrides (channel_base, ...)
    cache_dir: str | None = None
    threads: int | None = None
    progress: bool = True
    export: bool = True
    amp: bool | None = None  # None: auto (bf16 on CUDA) — see common.Acceleration
    channels_last: bool | None = None
    compile: bool | None = None
    fused: bool | None = None

    def net_config(self) -> StyleGAN2Config:
        return StyleGAN2Config.from_dict({**self.net, "resolution": self.resolution})


def build_dataset(cfg: TrainConfig, resolution: int | None = None):
    from services.common.datasets import XrayDataset, load_records

    if not cfg.data:
        raise ValueError("no training data given (--data PATH)")
    records = load_records(cfg.data, cfg.layout, views=tuple(cfg.views) if cfg.views else None, split=cfg.split,
                           split_by=cfg.split_by)
    kw = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
    return XrayDataset(records, resolution or cfg.resolution, **kw)


def condition_dropout(codes: torch.Tensor, p: float) -> torch.Tensor:
    if p <= 0:
        return codes
    drop = torch.rand(codes.shape, device=codes.device) < p
    return torch.where(drop, torch.full_like(codes, 2), codes)


@torch.no_grad()
def sample_rows(G: Generator, conditions: list[Condition], seeds=GRID_SEEDS, psi: float = 1.0) -> list[np.ndarray]:
    """Deterministic samples (same inputs as inference): one row (len(seeds), H, W) in [0,1] per condition."""
    E = GeneratorExport(G).eval()
    dev = next(G.parameters()).device
    nd = E.noise_dim()
    zs, ns = zip(*(seed_inputs(s, G.z_dim, nd) for s in seeds))
    z, noise = torch.stack(zs).to(dev), torch.stack(ns).to(dev)
    rows = []
    for cond in conditions:
        c = encode_conditions(torch.tensor([cond.codes()] * len(seeds)), G.cfg.num_findings).to(dev)
        center = torch.zeros(len(seeds), G.w_dim, device=dev)
        img = E(z, c, center, torch.full((len(seeds), 1), psi, device=dev), noise)
        rows.append(((img[:, 0].float().clamp(-1, 1) + 1) / 2).cpu().numpy())
    return rows


def write_grid(G: Generator, path: Path) -> Path:
    named = grid_conditions()
    rows = sample_rows(G, [c for _, c in named])
    return save_grid(rows, path, labels=[n for n, _ in named])


class StyleGAN2Trainer:
    def __init__(self, cfg: TrainConfig, dataset=None):
        self.budget = TimeBudget(cfg.max_minutes, already_s=process_age_s() if cfg.budget_from_process_start else 0.0)  # counts from here: data loading and the end included
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        enable_tf32(self.device)
        self.accel = Acceleration.resolve(self.device, cfg.amp, cfg.channels_last, cfg.compile, cfg.fused)
        self.out = Path(cfg.out)
        check_run_folder(self.out, resume=cfg.resume, overwrite=cfg.overwrite)
        self.shipped = open_shipped(cfg.resume_from, "stylegan2") if cfg.resume_from else None
        self.model_id = export_model_id(cfg.model_id, "stylegan2", self.out, cfg.replace,
                                        continues=self.shipped.descriptor["model_id"] if self.shipped else None)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.out / CHECKPOINT
        seed_everything(cfg.seed)
        self.net_cfg = (StyleGAN2Config.from_dict(self.shipped.descriptor["config"]) if self.shipped
                        else cfg.net_config())
        mf = self.accel.memory_format()
        self.G = Generator(self.net_cfg).to(self.device, memory_format=mf)
        self.D = Discriminator(self.net_cfg).to(self.device, memory_format=mf)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        adam = {"betas": (0.0, 0.99), "eps": 1e-8, **({"fused": True} if self.accel.fused else {})}
        self.optG = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, **adam)
        self.optD = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, **adam)
        self.gamma = cfg.gamma if cfg.gamma is not None else 0.0002 * self.net_cfg.resolution**2 / cfg.batch
        self.aug = AdaptiveAugment(p=cfg.aug_p, target=cfg.ada_target, ada_kimg=cfg.ada_kimg,
                                   adaptive=(cfg.aug == "ada"), device=self.device)
        if cfg.aug == "none":
            self.aug.disable()
        if self.shipped is not None and cfg.resolution and cfg.resolution != self.net_cfg.resolution:
            raise ValueError(f"--resume-from {cfg.resume_from}: the model is {self.net_cfg.resolution} px, "
                             f"--resolution is {cfg.resolution}")
        self.dataset = dataset if dataset is not None else build_dataset(cfg, self.net_cfg.resolution)
        self.batches = InfiniteBatches(self.dataset, cfg.batch, self.device, seed=cfg.seed)
        self.step = 0
        self.nimg = 0
        self.train_seconds = 0.0
        self.metrics_log = JsonlLog(self.out / "log.jsonl")
        if cfg.resume and self.ckpt_path.exists():
            self.load(self.ckpt_path)
        elif self.shipped is not None:
            self.continue_shipped()
        # compiled forwards for the plain passes; R1's double backward runs the eager modules
        self.G_synthesis = torch.compile(self.G.synthesis) if self.accel.compile else self.G.synthesis
        self.D_fwd = torch.compile(self.D) if self.accel.compile else self.D

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "optG": self.optG.state_dict(), "optD": self.optD.state_dict(),
            "step": self.step, "nimg": self.nimg, "train_seconds": self.train_seconds,
            "aug": self.aug.state_dict(), "batches": self.batches.state_dict(), "rng": rng_state(),
            "net_config": self.net_cfg.to_dict(), "train_config": asdict(self.cfg),
        }

    def save(self, path: Path | None = None) -> Path:
        with timed(self.budget, "save"):
            return save_checkpoint(path or self.ckpt_path, self.state_dict())

    def load(self, path: Path) -> None:
        st = load_checkpoint(path, map_location=self.device)
        check_resume_config(path, "network config", st["net_config"], self.net_cfg.to_dict())
        self.G.load_state_dict(st["G"])
        self.D.load_state_dict(st["D"])
        self.G_ema.load_state_dict(st["G_ema"])
        self.optG.load_state_dict(st["optG"])
        self.optD.load_state_dict(st["optD"])
        self.step, self.nimg, self.train_seconds = st["step"], st["nimg"], st.get("train_seconds", 0.0)
        self.aug.load_state_dict(st["aug"])
        bst = st["batches"]
        bst["perm"] = bst["perm"].cpu()
        self.batches.load_state_dict(bst)
        rng = st["rng"]
        rng["torch"] = rng["torch"].cpu()
        if "cuda" in rng:
            rng["cuda"] = [t.cpu() for t in rng["cuda"]]
        set_rng_state(rng)
        log.info("resumed from %s at step %d (%.1f kimg)", path, self.step, self.nimg / 1000)

    def continue_shipped(self) -> None:
        """Start from a shipped model: G_ema from its weights; G, D, Adam's second moments, counters and the
        ADA probability from its training state (:mod:`.state`); without a state, G starts from G_ema and D
        fresh (said in the log: a fresh D against a trained G costs the first thousands of images)."""
        from services.generator.models.stylegan2.loader import load_weights

        sh = self.shipped
        self.G_ema.load_state_dict(load_weights(sh.weights, sh.descriptor["config"]).state_dict())
        st = sh.state
        if st is None:
            self.G.load_state_dict(self.G_ema.state_dict())
            log.warning("%s ships no training state: G starts from its EMA weights, D and Adam from scratch",
                        sh.descriptor["model_id"])
            return
        self.G.load_state_dict(st.nets("G"))
        self.D.load_state_dict(st.nets("D"))
        self.step, self.nimg, self.train_seconds = st.step, st.nimg, st.train_seconds
        restore_adam(self.optG, self.G.named_parameters(), "G", st.tensors, st.step)
        restore_adam(self.optD, self.D.named_parameters(), "D", st.tensors, st.step)
        self.aug.set_p(float(st.extra.get("aug_p", self.aug.probability())))
        self.batches.gen.manual_seed(self.cfg.seed + self.step)
        log.info("continuing %s from its training state at step %d (%.1f kimg)", sh.descriptor["model_id"],
                 self.step, self.nimg / 1000)

    def training_state(self) -> TrainingState:
        tensors = {**net_tensors("G", self.G), **net_tensors("D", self.D),
                   **adam_moments(self.optG, self.G.named_parameters(), "G"),
                   **adam_moments(self.optD, self.D.named_parameters(), "D")}
        return TrainingState("stylegan2", self.step, self.nimg, self.train_seconds,
                             extra={"aug_p": round(self.aug.probability(), 6), "gamma": self.gamma,
                                    "net_config": self.net_cfg.to_dict(), "batch": self.cfg.batch},
                             tensors=tensors)

    # -- one step ---------------------------------------------------------------------------------------
    def run_G(self, z: torch.Tensor, c: torch.Tensor, update_emas: bool = False) -> torch.Tensor:
        G = self.G
        ws = G.mapping(z, c, update_emas=update_emas).unsqueeze(1).repeat([1, G.num_ws, 1])
        if self.cfg.style_mixing > 0:
            cutoff = torch.empty([], dtype=torch.int64, device=ws.device).random_(1, ws.shape[1])
            cutoff = torch.where(torch.rand([], device=ws.device) < self.cfg.style_mixing, cutoff,
                                 torch.full_like(cutoff, ws.shape[1]))
            w2 = G.mapping(torch.randn_like(z), c).unsqueeze(1)
            mix = (torch.arange(ws.shape[1], device=ws.device) >= cutoff).reshape(1, -1, 1)
            ws = torch.where(mix, w2, ws)
        return self.G_synthesis(ws, noise_mode="random")

    def train_step(self) -> dict:
        """One G and one D update. Returns device tensors only: nothing here waits for the GPU."""
        cfg, dev, mf = self.cfg, self.device, self.accel.memory_format()
        real, codes = self.batches.next()
        real = real.float().contiguous(memory_format=mf)
        c = encode_conditions(condition_dropout(codes, cfg.p_uncond), self.net_cfg.num_findings).to(dev)
        B = real.shape[0]
        z_dim = self.net_cfg.z_dim
        # G: non-saturating loss
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        with self.accel.autocast(dev):
            fake = self.run_G(torch.randn(B, z_dim, device=dev), c, update_emas=True)
            loss_G = F.softplus(-self.D_fwd(self.aug(fake), c).float()).mean()
        self.optG.zero_grad(set_to_none=True)
        loss_G.backward()
        self.optG.step()
        # D: logistic loss + lazy R1
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        do_r1 = cfg.r1_interval > 0 and self.gamma > 0 and self.step % cfg.r1_interval == 0
        with self.accel.autocast(dev):
            with torch.no_grad():
                fake = self.run_G(torch.randn(B, z_dim, device=dev), c)
            logits_fake = self.D_fwd(self.aug(fake), c).float()
            # R1 is taken w.r.t. the augmented reals: differentiating through the augmentation would need a
            # double backward of grid_sample, which CUDA does not implement (NVlabs ships a custom op for it).
            real_tmp = self.aug(real.detach()).detach().requires_grad_(do_r1)
            logits_real = (self.D if do_r1 else self.D_fwd)(real_tmp, c).float()
        loss_D = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        r1 = None
        if do_r1:
            (g,) = torch.autograd.grad(logits_real.sum(), real_tmp, create_graph=True)
            r1 = g.float().square().sum(dim=[1, 2, 3]).mean()
            loss_D = loss_D + r1 * (self.gamma / 2) * cfg.r1_interval
        self.optD.zero_grad(set_to_none=True)
        loss_D.backward()
        self.optD.step()
        self.D.requires_grad_(False)
        # augmentation (adjusted on the device), EMA, counters
        self.aug.accumulate(logits_real)
        if (self.step + 1) % 4 == 0:
            self.aug.update(B * 4)
        self.nimg += B
        ema_update(self.G_ema, self.G, ema_beta(B, self.nimg, cfg.ema_kimg, cfg.ema_rampup))
        self.step += 1
        out = {"loss_G": loss_G.detach(), "loss_D": loss_D.detach(),
               "real": logits_real.detach().mean(), "fake": logits_fake.detach().mean()}
        if r1 is not None:
            out["r1"] = r1.detach()
        return out

    # -- loop -------------------------------------------------------------------------------------------
    def finish_cost(self) -> float:
        """What the end of the run costs (checkpoint, grid, export), as last measured."""
        return self.budget.finish_cost({"save": 2.0, "grid": 2.0, "export": 2.0})

    def train(self) -> dict:
        cfg, budget = self.cfg, self.budget
        from tqdm.auto import tqdm

        total = int(cfg.kimg * 1000)
        log.info("training StyleGAN2 %s: G %.2fM params, D %.2fM params, %d real images, device %s (%s), batch %d, "
                 "gamma %.4g", self.model_id, count_params(self.G) / 1e6, count_params(self.D) / 1e6, self.batches.n,
                 self.device, self.accel.describe(), cfg.batch, self.gamma)
        bar = tqdm(total=total, initial=min(self.nimg, total), unit="img", disable=not cfg.progress,
                   dynamic_ncols=True, desc="stylegan2")
        last_snap = time.monotonic()
        t_tick, n_tick = time.monotonic(), self.nimg
        stop_reason = "kimg"
        while self.nimg < total:
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                stop_reason = "max_steps"
                break
            if budget.exceeded(self.finish_cost()):
                stop_reason = "max_minutes"
                break
            t0 = time.monotonic()
            last = self.train_step()
            bar.update(cfg.batch)
            if self.step % cfg.log_every == 0 or self.step == 1:
                vals = torch.stack([v.float() for v in last.values()]).tolist()  # the loop's one host sync
                now = time.monotonic()
                ips = (self.nimg - n_tick) / max(now - t_tick, 1e-6)
                t_tick, n_tick = now, self.nimg
                rec = dict(zip(last, vals))
                bar.set_postfix(G=f"{rec['loss_G']:.3f}", D=f"{rec['loss_D']:.3f}", p=f"{self.aug.probability():.2f}",
                                ips=f"{ips:.0f}")
                self.metrics_log.write(step=self.step, kimg=self.nimg / 1000, img_s=ips, aug_p=self.aug.probability(),
                                       t=self.train_seconds, **rec)
            self.train_seconds += time.monotonic() - t0
            if (cfg.snap_minutes and time.monotonic() - last_snap > cfg.snap_minutes * 60
                    and budget.allows("snapshot", self.finish_cost(), prior=4.0)):
                with timed(budget, "snapshot"):
                    self.snapshot()
                last_snap = time.monotonic()
        bar.close()
        self.save()
        with timed(budget, "grid"):
            grid = write_grid(self.G_ema, self.out / "samples" / f"grid-{self.nimg // 1000:06d}kimg.png")
        summary = {"model_id": self.model_id, "step": self.step, "kimg": self.nimg / 1000,
                   "train_seconds": self.train_seconds, "stop": stop_reason, "checkpoint": str(self.ckpt_path),
                   "grid": str(grid), "aug_p": self.aug.probability(), "acceleration": self.accel.describe()}
        if cfg.export:
            with timed(budget, "export"):
                summary.update(self.export(grid=grid))
        summary["wall_seconds"] = round(budget.elapsed(), 1)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("training stopped (%s) at step %d, %.1f kimg, %.0f s in all", stop_reason, self.step,
                 self.nimg / 1000, budget.elapsed())
        return summary

    def snapshot(self) -> None:
        self.save()
        write_grid(self.G_ema, self.out / "samples" / f"grid-{self.nimg // 1000:06d}kimg.png")

    def export(self, out_dir: Path | None = None, grid: Path | None = None) -> dict:
        """EMA weights (fp16) -> ``<model_id>.safetensors``, the training state -> ``<model_id>.train.safetensors``,
        descriptor ``<model_id>.json`` and the sample grid PNG."""
        from services.generator.registry import sha256_file

        cfg = self.cfg
        out_dir = Path(out_dir or self.out / "export")
        out_dir.mkdir(parents=True, exist_ok=True)
        mid = self.model_id
        dev_name = torch.cuda.get_device_name(0) if self.device.startswith("cuda") else "cpu"
        training = {
            "data": str(cfg.data) if cfg.data else None, "layout": cfg.layout,
            "views": list(cfg.views) if cfg.views else "all",
            "split": cfg.split, "split_by": cfg.split_by, "num_images": self.batches.n, "steps": self.step,
            "kimg": round(self.nimg / 1000, 3), "batch": cfg.batch, "train_seconds": round(self.train_seconds, 1),
            "device": dev_name, "torch": torch.__version__, "gamma": self.gamma, "ema_kimg": cfg.ema_kimg,
            "aug": cfg.aug, "aug_p_final": round(self.aug.probability(), 4), "lr_g": cfg.lr_g, "lr_d": cfg.lr_d,
            "style_mixing": cfg.style_mixing, "p_uncond": cfg.p_uncond, "seed": cfg.seed,
            "acceleration": self.accel.describe(),
            "continued_from": self.shipped.descriptor["model_id"] if self.shipped else None,
        }
        wpath = save_weights(self.G_ema, out_dir / f"{mid}.safetensors", metadata={"training": training},
                             dtype=torch.float16)
        state = save_state(out_dir / state_file_name(mid), self.training_state())
        samples = out_dir / f"{mid}-samples.png"
        if grid is not None and Path(grid).exists():
            shutil.copyfile(grid, samples)
        else:
            write_grid(self.G_ema, samples)
        desc = {
            "model_id": mid, "family": "stylegan2", "weights": wpath.name, "resolution": self.net_cfg.resolution,
            "card": f"{mid}.md", "samples": samples.name, "aliases": [],
            "description": f"Conditional StyleGAN2, {self.net_cfg.resolution}x{self.net_cfg.resolution} greyscale "
                           f"chest X-rays (4 findings, present/absent/unspecified)",
            "sha256": sha256_file(wpath), "config": self.net_cfg.to_dict(),
            "generation": {"truncation": 1.0, "truncation_center": "condition"},
            "params_G": count_params(self.G_ema), "training": training, "training_state": state,
        }
        if cfg.replace:
            desc["replaces"] = mid
        dpath = out_dir / f"{mid}.json"
        dpath.write_text(json.dumps(desc, indent=2))
        return {"weights": str(wpath), "descriptor": str(dpath), "samples": str(samples),
                "training_state": str(out_dir / state["file"])}


def train(cfg: TrainConfig, dataset=None) -> dict:
    return StyleGAN2Trainer(cfg, dataset=dataset).train()
