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
from .common import (CHECKPOINT, InfiniteBatches, JsonlLog, TimeBudget, check_resume_config, check_run_folder,
                     ema_beta, ema_update, grid_conditions, load_checkpoint, rng_state, save_checkpoint, save_grid,
                     seed_everything, set_rng_state)

log = get_logger(__name__)

GRID_SEEDS = tuple(range(8))


@dataclass
class TrainConfig:
    out: str
    data: str | None = None
    layout: str = "nih"
    views: tuple[str, ...] | None = ("PA",)  # None: every view
    split: str | None = "train"
    resolution: int = 64
    resume: bool = False
    overwrite: bool = False  # start a fresh run over an existing OUT/checkpoint.pt (else refused unless resume)
    kimg: float = 1000.0
    max_minutes: float | None = None
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
    seed: int = 0
    model_id: str = "stylegan2-cxr64"
    net: dict = field(default_factory=dict)  # StyleGAN2Config overrides (channel_base, ...)
    cache_dir: str | None = None
    threads: int | None = None
    progress: bool = True
    export: bool = True

    def net_config(self) -> StyleGAN2Config:
        return StyleGAN2Config.from_dict({**self.net, "resolution": self.resolution})


def build_dataset(cfg: TrainConfig):
    from services.common.datasets import XrayDataset, load_records

    if not cfg.data:
        raise ValueError("no training data given (--data PATH)")
    records = load_records(cfg.data, cfg.layout, views=tuple(cfg.views) if cfg.views else None, split=cfg.split)
    kw = {"cache_dir": cfg.cache_dir} if cfg.cache_dir else {}
    return XrayDataset(records, cfg.resolution, **kw)


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
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        if self.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        self.out = Path(cfg.out)
        check_run_folder(self.out, resume=cfg.resume, overwrite=cfg.overwrite)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.out / CHECKPOINT
        seed_everything(cfg.seed)
        self.net_cfg = cfg.net_config()
        self.G = Generator(self.net_cfg).to(self.device)
        self.D = Discriminator(self.net_cfg).to(self.device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.optG = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=(0.0, 0.99), eps=1e-8)
        self.optD = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=(0.0, 0.99), eps=1e-8)
        self.gamma = cfg.gamma if cfg.gamma is not None else 0.0002 * cfg.resolution**2 / cfg.batch
        self.aug = AdaptiveAugment(p=cfg.aug_p, target=cfg.ada_target, ada_kimg=cfg.ada_kimg,
                                   adaptive=(cfg.aug == "ada"))
        if cfg.aug == "none":
            self.aug.p = 0.0
        self.dataset = dataset if dataset is not None else build_dataset(cfg)
        self.batches = InfiniteBatches(self.dataset, cfg.batch, self.device, seed=cfg.seed)
        self.step = 0
        self.nimg = 0
        self.train_seconds = 0.0
        self.metrics_log = JsonlLog(self.out / "log.jsonl")
        if cfg.resume and self.ckpt_path.exists():
            self.load(self.ckpt_path)

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
        return G.synthesis(ws, noise_mode="random")

    def train_step(self) -> dict:
        cfg, dev = self.cfg, self.device
        real, codes = self.batches.next()
        real = real.to(dev).float()
        c = encode_conditions(condition_dropout(codes.to(dev), cfg.p_uncond), self.net_cfg.num_findings).to(dev)
        B = real.shape[0]
        z_dim = self.net_cfg.z_dim
        # G: non-saturating loss
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        fake = self.run_G(torch.randn(B, z_dim, device=dev), c, update_emas=True)
        loss_G = F.softplus(-self.D(self.aug(fake), c)).mean()
        self.optG.zero_grad(set_to_none=True)
        loss_G.backward()
        self.optG.step()
        # D: logistic loss + lazy R1
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad():
            fake = self.run_G(torch.randn(B, z_dim, device=dev), c)
        logits_fake = self.D(self.aug(fake), c)
        do_r1 = cfg.r1_interval > 0 and self.gamma > 0 and self.step % cfg.r1_interval == 0
        # R1 is taken w.r.t. the augmented reals: differentiating through the augmentation would need a
        # double backward of grid_sample, which CUDA does not implement (NVlabs ships a custom op for it).
        real_tmp = self.aug(real.detach()).detach().requires_grad_(do_r1)
        logits_real = self.D(real_tmp, c)
        loss_D = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        r1 = torch.zeros([], device=dev)
        if do_r1:
            (g,) = torch.autograd.grad(logits_real.sum(), real_tmp, create_graph=True)
            r1 = g.square().sum(dim=[1, 2, 3]).mean()
            loss_D = loss_D + r1 * (self.gamma / 2) * cfg.r1_interval
        self.optD.zero_grad(set_to_none=True)
        loss_D.backward()
        self.optD.step()
        self.D.requires_grad_(False)
        # augmentation, EMA, counters
        self.aug.accumulate(logits_real)
        rt = self.aug.update(B * 4) if (self.step + 1) % 4 == 0 else None
        self.nimg += B
        ema_update(self.G_ema, self.G, ema_beta(B, self.nimg, cfg.ema_kimg, cfg.ema_rampup))
        self.step += 1
        out = {"loss_G": loss_G.detach(), "loss_D": loss_D.detach(), "r1": r1.detach() if do_r1 else None,
               "real": logits_real.detach().mean(), "fake": logits_fake.detach().mean()}
        if rt is not None:
            out["rt"] = rt
        return out

    # -- loop -------------------------------------------------------------------------------------------
    def train(self) -> dict:
        cfg = self.cfg
        from tqdm.auto import tqdm

        total = int(cfg.kimg * 1000)
        budget = TimeBudget(cfg.max_minutes)
        log.info("training StyleGAN2: G %.2fM params, D %.2fM params, %d real images, device %s, batch %d, "
                 "gamma %.4g", count_params(self.G) / 1e6, count_params(self.D) / 1e6, self.batches.n, self.device,
                 cfg.batch, self.gamma)
        bar = tqdm(total=total, initial=min(self.nimg, total), unit="img", disable=not cfg.progress,
                   dynamic_ncols=True, desc="stylegan2")
        last_snap = time.monotonic()
        t_tick, n_tick = time.monotonic(), self.nimg
        stop_reason = "kimg"
        last = {}
        while self.nimg < total:
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                stop_reason = "max_steps"
                break
            if budget.exceeded():
                stop_reason = "max_minutes"
                break
            t0 = time.monotonic()
            last = self.train_step()
            self.train_seconds += time.monotonic() - t0
            bar.update(cfg.batch)
            if self.step % 10 == 0 or self.step == 1:
                now = time.monotonic()
                ips = (self.nimg - n_tick) / max(now - t_tick, 1e-6)
                t_tick, n_tick = now, self.nimg
                rec = {k: (float(v) if v is not None else None) for k, v in last.items()}
                bar.set_postfix(G=f"{rec['loss_G']:.3f}", D=f"{rec['loss_D']:.3f}", p=f"{self.aug.p:.2f}",
                                ips=f"{ips:.0f}")
                self.metrics_log.write(step=self.step, kimg=self.nimg / 1000, img_s=ips, aug_p=self.aug.p,
                                       t=self.train_seconds, **rec)
            if cfg.snap_minutes and time.monotonic() - last_snap > cfg.snap_minutes * 60:
                self.snapshot()
                last_snap = time.monotonic()
        bar.close()
        self.save()
        grid = write_grid(self.G_ema, self.out / "samples" / f"grid-{self.nimg // 1000:06d}kimg.png")
        summary = {"step": self.step, "kimg": self.nimg / 1000, "train_seconds": self.train_seconds,
                   "stop": stop_reason, "checkpoint": str(self.ckpt_path), "grid": str(grid), "aug_p": self.aug.p}
        if cfg.export:
            summary.update(self.export())
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("training stopped (%s) at step %d, %.1f kimg", stop_reason, self.step, self.nimg / 1000)
        return summary

    def snapshot(self) -> None:
        self.save()
        write_grid(self.G_ema, self.out / "samples" / f"grid-{self.nimg // 1000:06d}kimg.png")

    def export(self, out_dir: Path | None = None) -> dict:
        """EMA weights -> ``<model_id>.safetensors`` + descriptor ``<model_id>.json`` + sample grid PNG."""
        from services.generator.registry import sha256_file

        cfg = self.cfg
        out_dir = Path(out_dir or self.out / "export")
        out_dir.mkdir(parents=True, exist_ok=True)
        mid = cfg.model_id
        dev_name = torch.cuda.get_device_name(0) if self.device.startswith("cuda") else "cpu"
        training = {
            "data": str(cfg.data) if cfg.data else None, "layout": cfg.layout,
            "views": list(cfg.views) if cfg.views else "all",
            "split": cfg.split, "num_images": self.batches.n, "steps": self.step, "kimg": round(self.nimg / 1000, 3),
            "batch": cfg.batch, "train_seconds": round(self.train_seconds, 1), "device": dev_name,
            "torch": torch.__version__, "gamma": self.gamma, "ema_kimg": cfg.ema_kimg, "aug": cfg.aug,
            "aug_p_final": round(self.aug.p, 4), "lr_g": cfg.lr_g, "lr_d": cfg.lr_d, "style_mixing": cfg.style_mixing,
            "p_uncond": cfg.p_uncond, "seed": cfg.seed,
        }
        wpath = save_weights(self.G_ema, out_dir / f"{mid}.safetensors", metadata={"training": training})
        grid = write_grid(self.G_ema, out_dir / f"{mid}-samples.png")
        desc = {
            "model_id": mid, "family": "stylegan2", "weights": wpath.name, "resolution": cfg.resolution,
            "card": f"{mid}.md", "samples": grid.name, "aliases": ["stylegan2"] if mid == "stylegan2-cxr64" else [],
            "description": f"Conditional StyleGAN2, {cfg.resolution}x{cfg.resolution} greyscale chest X-rays "
                           f"(4 findings, present/absent/unspecified)",
            "sha256": sha256_file(wpath), "config": self.net_cfg.to_dict(),
            "generation": {"truncation": 1.0, "truncation_center": "condition"},
            "params_G": count_params(self.G_ema), "training": training,
        }
        dpath = out_dir / f"{mid}.json"
        dpath.write_text(json.dumps(desc, indent=2))
        return {"weights": str(wpath), "descriptor": str(dpath), "samples": str(grid)}


def train(cfg: TrainConfig, dataset=None) -> dict:
    return StyleGAN2Trainer(cfg, dataset=dataset).train()
