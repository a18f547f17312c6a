"""Training throughput benchmark: images/s of training steps per model, the previous release's settings
("today") against the trainers' new device defaults ("new"), both measured in the same run.

Each row builds the real trainer (``services.generator.train.stylegan2.StyleGAN2Trainer`` /
``services.generator.train.diffusion.DiffusionTrainer``) on the shipped architecture — StyleGAN2:
``StyleGAN2Config(resolution=R)`` defaults (channel_base 4096, channel_max 256); DDPM: UNet preset ``cxr64``
at 64 px, ``cxr128`` at 128 px — and calls ``trainer.train_step()`` (one optimiser step: for StyleGAN2 one G
and one D update, lazy R1 every 16 steps, ADA, EMA) repeatedly.

Data: SYNTHETIC random images in [-1, 1] with random finding codes (``--images``, default 4096 on CUDA,
256 on CPU), preloaded on the device by the trainer's ``InfiniteBatches`` as in a real run of a small
dataset. Throughput does not depend on the content.

Settings:

* ``today`` — the previous release: fp32 (TF32 matmuls on CUDA, as then), no compile, no channels_last,
  plain (foreach) Adam, ``cudnn.benchmark`` off, batch 32 (StyleGAN2) / 64 (DDPM), and a host sync every
  step: ``float()`` of the loss after each step (the old DDPM loop did exactly that); for StyleGAN2 also the
  ADA probability read every 4 steps (``trainer.aug.probability()``).
* ``new`` — the trainer's auto settings for the device (CUDA: bf16 autocast + channels_last +
  torch.compile + fused Adam; CPU: fp32 eager, the same as today), the large batch of ``--new-batch``
  (CUDA defaults: StyleGAN2 256 at 64 px / 128 at 128 px, DDPM 256 / 128), no host sync in the loop (the
  losses are kept on the device and read once, after the last step, with ``torch.cuda.synchronize()``).
* single switches (``--variants``, CUDA): ``new-no-compile``, ``new-no-amp``, ``new-no-channels-last``,
  ``new-no-fused``, ``new-today-batch`` (new settings at today's batch), ``new-sync-every-step``.

Warm-up steps (``--warmup``; torch.compile and cuDNN autotuning happen there) are excluded from images/s
and reported as ``warmup_s``; building the trainer (model init, data preload; for a family's first row
also the module imports) is ``build_s``. ``ratio`` =
images/s / images/s of ``today`` for the same model in this run. On CUDA the StyleGAN2 64 px ``new`` row is
also compared with the issue's target: 10x the 318 img/s that StyleGAN2 64 px trained at on an H100 with
today's settings = 3180 img/s.

    python benchmarks/bench_training.py --device cuda --json benchmarks/bench_training_gpu.json
    python benchmarks/bench_training.py --device cpu --quick --json benchmarks/bench_training_cpu.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: model name -> (family, resolution, DDPM UNet preset)
MODELS: dict[str, tuple[str, int, str | None]] = {
    "stylegan2-64": ("stylegan2", 64, None),
    "stylegan2-128": ("stylegan2", 128, None),
    "ddpm-64": ("ddpm", 64, "cxr64"),
    "ddpm-128": ("ddpm", 128, "cxr128"),
}
TODAY_BATCH = {"stylegan2": 32, "ddpm": 64}  # the trainers' batch defaults of the previous release
NEW_BATCH = {"stylegan2-64": 256, "stylegan2-128": 128, "ddpm-64": 256, "ddpm-128": 128}

#: H100 reference (issue 11): StyleGAN2 64 px, today's settings
H100_TODAY_SG2_64 = 318.0
TARGET_FACTOR = 10.0

_AUTO = {"amp": None, "channels_last": None, "compile": None, "fused": None}
_OFF = {"amp": False, "channels_last": False, "compile": False, "fused": False}
#: variant -> (acceleration switches, batch kind "today"/"new", per-step host sync, cudnn.benchmark)
VARIANTS: dict[str, tuple[dict, str, bool, bool]] = {
    "today": (_OFF, "today", True, False),
    "new": (_AUTO, "new", False, True),
    "new-no-compile": ({**_AUTO, "compile": False}, "new", False, True),
    "new-no-amp": ({**_AUTO, "amp": False}, "new", False, True),
    "new-no-channels-last": ({**_AUTO, "channels_last": False}, "new", False, True),
    "new-no-fused": ({**_AUTO, "fused": False}, "new", False, True),
    "new-today-batch": (_AUTO, "today", False, True),
    "new-sync-every-step": (_AUTO, "new", True, True),
}
DEFAULT_VARIANTS = {"cuda": ("today", "new", "new-no-compile"), "cpu": ("today", "new")}

#: --tiny: nets small enough for a test (16 px)
TINY_RES = 16
TINY_SG2 = {"channel_base": 256, "channel_max": 32, "d_channel_base": 256, "d_channel_max": 32, "z_dim": 32,
            "w_dim": 32, "mapping_layers": 2}


class SyntheticXrays(torch.utils.data.Dataset):
    """``n`` random one-channel images in [-1, 1] with random finding codes in {0, 1, 2} (seeded)."""

    def __init__(self, n: int, res: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, res, res, generator=g) * 2 - 1
        self.c = torch.randint(0, 3, (n, 4), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.c[i]


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def build_trainer(model: str, *, device: str, batch: int, switches: dict, dataset, out: str, tiny: bool = False):
    family, res, preset = MODELS[model]
    if tiny:
        res = TINY_RES
    if family == "stylegan2":
        from services.generator.train.stylegan2 import StyleGAN2Trainer, TrainConfig

        cfg = TrainConfig(out=out, resolution=res, batch=batch, device=device, progress=False, export=False,
                          net=dict(TINY_SG2) if tiny else {}, **switches)
        return StyleGAN2Trainer(cfg, dataset=dataset)
    from services.generator.train.diffusion import DiffusionTrainConfig, DiffusionTrainer

    cfg = DiffusionTrainConfig(out=out, resolution=res, preset="tiny" if tiny else preset, batch=batch, device=device,
                               progress=False, **switches)
    return DiffusionTrainer(cfg, dataset=dataset)


def _loss_of(out) -> torch.Tensor:
    return out["loss_G"] if isinstance(out, dict) else out


def _compiled_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # pragma: no cover - dynamo internals moved
        return 0


def run_steps(trainer, n: int, sync_every_step: bool, family: str) -> tuple[float, float]:
    """Seconds for ``n`` training steps (the device drained before and after) and the last loss."""
    device = trainer.device
    losses: list[torch.Tensor] = []
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        out = trainer.train_step()
        if sync_every_step:  # the old loops: the loss read on the host after each step
            losses.append(torch.tensor(float(_loss_of(out))))
            if family == "stylegan2" and trainer.step % 4 == 0:
                trainer.aug.probability()
        else:  # the new loops: losses stay on the device, read once
            losses.append(_loss_of(out))
    last = float(torch.stack([v.float().to(losses[-1].device) for v in losses])[-1]) if losses else float("nan")
    _sync(device)
    return time.perf_counter() - t0, last


def bench_variant(model: str, variant: str, *, device: str, steps: int, warmup: int, batch: int, dataset,
                  tiny: bool) -> dict:
    family = MODELS[model][0]
    switches, _, sync_every, cudnn_bench = VARIANTS[variant]
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="bench-training-") as out:
        t0 = time.perf_counter()
        trainer = build_trainer(model, device=device, batch=batch, switches=switches, dataset=dataset, out=out,
                                tiny=tiny)
        if cuda:
            torch.backends.cudnn.benchmark = cudnn_bench  # the trainer turned it on; the previous release did not
        _sync(device)
        build_s = time.perf_counter() - t0
        g0 = _compiled_graphs()
        warm_s, _ = run_steps(trainer, warmup, sync_every, family)
        g1 = _compiled_graphs()
        dt, last = run_steps(trainer, steps, sync_every, family)
        g2 = _compiled_graphs()
        row = {
            "model": model, "family": family, "resolution": int(MODELS[model][1] if not tiny else TINY_RES),
            "setting": variant, "batch": batch, "steps": steps, "warmup_steps": warmup,
            "img_per_s": steps * batch / dt, "step_ms": 1000.0 * dt / max(steps, 1),
            "warmup_s": round(warm_s, 3), "build_s": round(build_s, 3), "sync_every_step": sync_every,
            "acceleration": trainer.accel.describe(), "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "last_loss": last, "loss_finite": bool(torch.isfinite(torch.tensor(last))),
        }
        if trainer.accel.compile:  # graphs compiled in the timed steps = recompiles that the warm-up missed
            row["graphs_compiled_warmup"], row["graphs_compiled_timed"] = g1 - g0, g2 - g1
        if family == "stylegan2":
            row["r1_steps_timed"] = sum(1 for s in range(warmup, warmup + steps) if s % trainer.cfg.r1_interval == 0)
        if cuda:
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del trainer
    gc.collect()
    if switches.get("compile") is not False and cuda:
        torch._dynamo.reset()  # fresh compile caches: the next trainer's modules must not hit the recompile limit
    return row


def machine_info(device: str) -> dict:
    info = {"date": _dt.date.today().isoformat(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info.update(device_name=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    gpu_mem_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    else:
        info["device_name"] = info["cpu"]
    return info


def _parse_batches(spec: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, _, val = part.partition("=")
        name = name.strip()
        if name not in MODELS or not val.strip().isdigit():
            raise SystemExit(f"--new-batch: expected MODEL=N with MODEL in {', '.join(MODELS)}, got {part!r}")
        out[name] = int(val)
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default=None,
                   help=f"comma list of {', '.join(MODELS)} (default: all; --quick: the 64 px ones)")
    p.add_argument("--variants", default=None,
                   help=f"comma list of {', '.join(VARIANTS)} or 'all' (default: today,new,new-no-compile on CUDA; "
                        "today,new on CPU); 'today' is always run (the ratios need it)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 96 CUDA, 6 CPU, 3 --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 16 CUDA, 2 CPU, 1 --quick)")
    p.add_argument("--new-batch", default=None, help="batch of the new settings, e.g. stylegan2-64=512,ddpm-128=96 "
                   f"(defaults on CUDA: {', '.join(f'{k}={v}' for k, v in NEW_BATCH.items())}; on CPU today's)")
    p.add_argument("--batch", type=int, default=None, help="one batch for every row (overrides both settings)")
    p.add_argument("--images", type=int, default=None, help="synthetic dataset size (default 4096 CUDA, 256 CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: batch 8, warm-up 1, 3 timed steps, 256 images, 64 px models")
    p.add_argument("--tiny", action="store_true", help="tiny nets at 16 px (tests only)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no GPU")
    if args.models is None:
        args.models = ",".join(m for m in MODELS if not args.quick or MODELS[m][1] == 64)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        p.error(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    if args.variants in (None, ""):
        variants = list(DEFAULT_VARIANTS["cuda" if cuda else "cpu"])
    elif args.variants.strip() == "all":
        variants = list(VARIANTS)
    else:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        bad = [v for v in variants if v not in VARIANTS]
        if bad:
            p.error(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    args.variants = ["today"] + [v for v in dict.fromkeys(variants) if v != "today"]
    if args.quick:
        args.batch = args.batch or 8
    args.steps = args.steps if args.steps is not None else (96 if cuda else 3 if args.quick else 6)
    args.warmup = args.warmup if args.warmup is not None else (16 if cuda else 1 if args.quick else 2)
    args.images = args.images or (4096 if cuda else 256)
    args.new_batch = {**(NEW_BATCH if cuda else {}), **_parse_batches(args.new_batch)}
    return args


def batch_for(args, model: str, variant: str) -> int:
    if args.batch:
        return args.batch
    kind = VARIANTS[variant][1]
    if kind == "new" and model in args.new_batch:
        return args.new_batch[model]
    return TODAY_BATCH[MODELS[model][0]]


def format_table(result: dict) -> str:
    cuda = result["machine"]["device"] == "cuda"
    head = f"{'model':<14} {'setting':<22} {'batch':>5} {'img/s':>9} {'ratio':>7} {'warm-up s':>9} {'build s':>8}"
    if cuda:
        head += f" {'peak GiB':>8}"
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        line = (f"{r['model']:<14} {r['setting']:<22} {r['batch']:>5} {r['img_per_s']:>9.{2 if r['img_per_s'] < 10 else 1}f} "
                f"{r['ratio_vs_today']:>6.2f}x {r['warmup_s']:>9.1f} {r['build_s']:>8.1f}")
        if cuda:
            line += f" {r.get('peak_mem_gib', float('nan')):>8.2f}"
        lines.append(line)
    t = result.get("target")
    if t:
        lines.append("")
        lines.append(f"target (issue 11): StyleGAN2 64 px new = {t['measured_img_per_s']:.0f} img/s vs "
                     f"{t['target_img_per_s']:.0f} img/s (10x {H100_TODAY_SG2_64:.0f} img/s, H100, today's settings): "
                     f"{t['fraction_of_target']:.2f} of the target, {t['vs_h100_today']:.1f}x the H100 baseline "
                     f"-> {'MET' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def run(args) -> dict:
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)


def _run(args) -> dict:
    device = args.device
    result = {"benchmark": "training throughput (images/s of optimiser steps)", "machine": machine_info(device),
              "data": f"synthetic: {args.images} random images in [-1,1] + random codes, preloaded on the device",
              "settings": {"steps": args.steps, "warmup": args.warmup, "images": args.images, "tiny": args.tiny,
                           "variants": args.variants,
                           "new_batch": {m: args.new_batch.get(m) for m in args.models},
                           "today_batch": dict(TODAY_BATCH), "batch_override": args.batch},
              "rows": [], "ratios": {}}
    for model in args.models:
        res = TINY_RES if args.tiny else MODELS[model][1]
        dataset = SyntheticXrays(args.images, res)
        today = None
        for variant in args.variants:
            batch = batch_for(args, model, variant)
            print(f"[{model}] {variant}: batch {batch}, {args.warmup} warm-up + {args.steps} timed steps ...",
                  flush=True)
            row = bench_variant(model, variant, device=device, steps=args.steps, warmup=args.warmup, batch=batch,
                                dataset=dataset, tiny=args.tiny)
            if variant == "today":
                today = row["img_per_s"]
            row["ratio_vs_today"] = row["img_per_s"] / today
            result["rows"].append(row)
            result["ratios"].setdefault(model, {})[variant] = round(row["ratio_vs_today"], 4)
            print(f"    {row['img_per_s']:.1f} img/s ({row['ratio_vs_today']:.2f}x today), warm-up {row['warmup_s']:.1f} s",
                  flush=True)
        del dataset
    if device == "cuda" and not args.tiny:
        new = [r for r in result["rows"] if r["model"] == "stylegan2-64" and r["setting"] == "new"]
        if new:
            target = H100_TODAY_SG2_64 * TARGET_FACTOR
            v = new[0]["img_per_s"]
            result["target"] = {"what": "StyleGAN2 64 px, new settings, >= 10x the H100 today baseline",
                                "h100_today_img_per_s": H100_TODAY_SG2_64, "target_img_per_s": target,
                                "measured_img_per_s": v, "fraction_of_target": v / target,
                                "vs_h100_today": v / H100_TODAY_SG2_64, "met": v >= target}
    return result


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    result = {"command": " ".join(["python benchmarks/bench_training.py", *argv]), **run(args)}
    print()
    print(format_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
