"""Diffusion sampling benchmark: images/s per sampler x steps x backend, with ratios measured in the same run.

Each row runs the real sampling loop (``services.generator.models.ddpm.sampling.sample``: a fresh
scheduler, per-image noise, classifier-free guidance = one UNet pass on [cond; null]) on the shipped
UNet architecture (``--preset cxr64``, random weights: speed does not depend on the weights), with the UNet
run by the family's backends (``services.generator.models.ddpm.loader.unet_runner``).

Ratios: ``vs_ddpm1000`` = images/s / images/s of eager 1000-step DDPM; ``vs_ddim50`` = images/s / images/s
of eager 50-step DDIM — both baselines measured in this run. On CPU the 1000-step DDPM baseline is timed
over its first ``--ddpm-probe-steps`` steps and extrapolated (flagged ``extrapolated``) unless
``--full-ddpm``; on CUDA it runs in full.

``--anchors`` adds the H100 anchor shapes (random weights, UNet ms/step): a 256px ~113M ``UNet2DModel``
at batch 32 (eager fp32, eager fp16, and with ``--anchor-compile`` fp16 + channels_last + torch.compile),
and an SD-1.5-class ``UNet2DConditionModel`` in fp16 with CFG at batch 8 (UNet batch 16, 77x768 text).

    python benchmarks/bench_diffusion.py --device cpu --batch 2 --json bench_cpu.json
    python benchmarks/bench_diffusion.py --device cuda --batch 16 --json bench_gpu.json --anchors
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.generator.models.ddpm.model import DEFAULT_SCHEDULE, ConditionalUNet, count_parameters, unet_config  # noqa: E402
from services.generator.models.ddpm.loader import unet_runner  # noqa: E402
from services.generator.models.ddpm.sampling import sample  # noqa: E402

ROWS = [("ddpm", 50), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpmpp", 20), ("dpmpp", 10)]
ONNX_ROWS = [("ddim", 50), ("ddim", 20), ("dpmpp", 20), ("dpmpp", 10)]


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_sampler(denoise, *, batch: int, res: int, sampler: str, steps: int, guidance: float, device: str,
                 probe_steps: int | None = None) -> tuple[float, bool]:
    """Seconds for one sampling run of ``batch`` images (extrapolated from ``probe_steps`` if given)."""
    codes = torch.tensor([[1, 0, 2, 0]] * batch)
    seeds = list(range(batch))
    calls = {"n": 0, "t_first": None}

    class Stop(Exception):
        pass

    def counted(x, t, c):
        calls["n"] += 1
        out = denoise(x, t, c)
        if probe_steps is not None and calls["n"] >= probe_steps:
            _sync(device)
            raise Stop
        return out

    _sync(device)
    t0 = time.perf_counter()
    try:
        sample(counted, codes, seeds, resolution=res, schedule=DEFAULT_SCHEDULE, sampler=sampler, steps=steps,
               guidance=guidance, device=device)
        _sync(device)
    except Stop:
        dt = time.perf_counter() - t0
        return dt / probe_steps * steps, True
    return time.perf_counter() - t0, False


def run_main(args) -> dict:
    device = args.device
    res = args.resolution
    torch.manual_seed(0)
    model = ConditionalUNet(unet_config(args.preset, res)).eval()
    n_params = count_parameters(model)
    out: dict = {"device": device, "preset": args.preset, "resolution": res, "parameters": n_params,
                 "batch": args.batch, "guidance": args.guidance, "unet_batch": args.batch * (2 if args.guidance != 1 else 1),
                 "torch": torch.__version__, "python": platform.python_version(), "rows": []}
    if torch.device(device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
        torch.backends.cudnn.benchmark = True
    else:
        out["cpu_threads"] = torch.get_num_threads()
    kw = dict(batch=args.batch, res=res, guidance=args.guidance, device=device)
    backends: dict[str, object] = {}
    backends["eager"] = unet_runner(model, "eager", device)
    # warm-up (cudnn autotune, allocator)
    time_sampler(backends["eager"], sampler="ddim", steps=3, **kw)

    full = args.full_ddpm or torch.device(device).type == "cuda"
    t, extrap = time_sampler(backends["eager"], sampler="ddpm", steps=1000,
                             probe_steps=None if full else args.ddpm_probe_steps, **kw)
    out["rows"].append({"sampler": "ddpm", "steps": 1000, "backend": "eager", "seconds": t, "extrapolated": extrap})

    if "compile" in args.backends:
        t0 = time.perf_counter()
        comp = unet_runner(model, "compile", device, compile_mode=args.compile_mode)
        time_sampler(comp, sampler="ddim", steps=2, **kw)  # triggers compilation at the benchmark shape
        out["compile_seconds"] = time.perf_counter() - t0
        out["compile_fell_back_to_eager"] = comp.fell_back
        out["compile_dtype"] = str(comp.dtype)
        backends["compile"] = comp
    if "onnx" in args.backends:
        import tempfile

        t0 = time.perf_counter()
        onnx = unet_runner(model, "onnx", device, cache_dir=tempfile.mkdtemp())
        out["onnx_export_seconds"] = time.perf_counter() - t0
        out["onnx_providers"] = onnx.providers
        time_sampler(onnx, sampler="ddim", steps=2, **kw)
        backends["onnx"] = onnx

    for name in ("eager", "compile", "onnx"):
        if name not in backends:
            continue
        rows = ONNX_ROWS if name == "onnx" else ROWS
        for sampler, steps in rows:
            t, _ = time_sampler(backends[name], sampler=sampler, steps=steps, **kw)
            out["rows"].append({"sampler": sampler, "steps": steps, "backend": name, "seconds": t, "extrapolated": False})
        if name == "eager" and not full:
            # the extrapolated baseline is probed again after the eager rows; the faster probe is kept
            # (a shared CPU makes a single short probe noisy)
            t2, _ = time_sampler(backends["eager"], sampler="ddpm", steps=1000, probe_steps=args.ddpm_probe_steps, **kw)
            out["rows"][0]["seconds"] = min(out["rows"][0]["seconds"], t2)

    base_ddpm = out["rows"][0]["seconds"]
    base_ddim = next(r["seconds"] for r in out["rows"] if r["backend"] == "eager" and r["sampler"] == "ddim" and r["steps"] == 50)
    for r in out["rows"]:
        r["images_per_s"] = args.batch / r["seconds"]
        r["ms_per_step"] = 1000 * r["seconds"] / r["steps"]
        r["vs_ddpm1000"] = base_ddpm / r["seconds"]
        r["vs_ddim50"] = base_ddim / r["seconds"]
    return out


# ---- anchors ---------------------------------------------------------------------------------------------
def _time_module(fn, iters: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return 1000 * (time.perf_counter() - t0) / iters


def run_anchors(args) -> list[dict]:
    from diffusers import UNet2DConditionModel, UNet2DModel

    device = args.device
    out = []
    iters, warmup = args.anchor_iters, 3
    # 256px DDPM UNet (google/ddpm-*-256 shape, ~113.7M parameters), batch 32
    with torch.device(device):
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
            block_out_channels=(128, 128, 256, 256, 512, 512),
            down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
        ).eval()
    n = count_parameters(unet)
    b = 32
    x = torch.randn(b, 3, 256, 256, device=device)
    t = torch.full((b,), 500, device=device)
    with torch.inference_mode():
        ms = _time_module(lambda: unet(x, t).sample, iters, warmup, device)
        out.append({"anchor": "ddpm256-113M", "batch": b, "variant": "eager fp32", "ms_per_step": ms, "parameters": n,
                    "reference_h100_ms": 177})
        unet_h = unet.half().to(memory_format=torch.channels_last)
        xh = x.half().contiguous(memory_format=torch.channels_last)
        ms = _time_module(lambda: unet_h(xh, t).sample, iters, warmup, device)
        out.append({"anchor": "ddpm256-113M", "batch": b, "variant": "eager fp16 channels_last", "ms_per_step": ms,
                    "parameters": n})
        if args.anchor_compile:
            t0 = time.perf_counter()
            cu = torch.compile(unet_h)
            cu(xh, t)
            _sync(device)
            cs = time.perf_counter() - t0
            ms = _time_module(lambda: cu(xh, t).sample, iters, warmup, device)
            out.append({"anchor": "ddpm256-113M", "batch": b, "variant": "compile fp16 channels_last", "ms_per_step": ms,
                        "parameters": n, "compile_seconds": cs, "reference_h100_ms": 63})
    del unet, unet_h, x, xh
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    # SD-1.5-class UNet (diffusers defaults + SD 1.x sizes), fp16, CFG at batch 8 -> UNet batch 16
    with torch.device(device):
        torch.manual_seed(0)
        sd = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, cross_attention_dim=768,
                                  attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
                                  layers_per_block=2).to(torch.float16).eval()
    n = count_parameters(sd)
    b = 16
    lat = torch.randn(b, 4, 64, 64, device=device, dtype=torch.float16)
    ctx = torch.randn(b, 77, 768, device=device, dtype=torch.float16)
    t = torch.full((b,), 500, device=device)
    with torch.inference_mode():
        ms = _time_module(lambda: sd(lat, t, encoder_hidden_states=ctx).sample, iters, warmup, device)
        out.append({"anchor": "sd15-unet", "batch": "8 x CFG (16)", "variant": "eager fp16", "ms_per_step": ms,
                    "parameters": n, "reference_h100_ms": 57})
        if args.anchor_compile:
            sd = sd.to(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            cs_ = torch.compile(sd)
            cs_(lat, t, encoder_hidden_states=ctx)
            _sync(device)
            cs = time.perf_counter() - t0
            ms = _time_module(lambda: cs_(lat, t, encoder_hidden_states=ctx).sample, iters, warmup, device)
            out.append({"anchor": "sd15-unet", "batch": "8 x CFG (16)", "variant": "compile fp16 channels_last",
                        "ms_per_step": ms, "parameters": n, "compile_seconds": cs, "reference_h100_ms": 37})
    return out


def print_table(res: dict) -> None:
    dev = res.get("gpu") or f"cpu x{res.get('cpu_threads')}"
    print(f"\nDDPM sampling, {res['preset']} UNet ({res['parameters'] / 1e6:.1f}M params) at {res['resolution']}px, "
          f"batch {res['batch']} (guidance {res['guidance']}: UNet batch {res['unet_batch']}), {dev}, torch {res['torch']}")
    if "compile_seconds" in res:
        print(f"compile warm-up {res['compile_seconds']:.1f}s ({res.get('compile_dtype')}, fell back to eager: "
              f"{res.get('compile_fell_back_to_eager')})")
    if "onnx_export_seconds" in res:
        print(f"onnx export+session {res['onnx_export_seconds']:.1f}s, providers {res.get('onnx_providers')}")
    hdr = f"{'sampler':8} {'steps':>5} {'backend':8} {'s/batch':>9} {'img/s':>9} {'ms/step':>8} {'vs DDPM1000':>11} {'vs DDIM50':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in res["rows"]:
        flag = "*" if r["extrapolated"] else ""
        print(f"{r['sampler']:8} {r['steps']:>5} {r['backend']:8} {r['seconds']:>8.3f}{flag:1} {r['images_per_s']:>9.2f} "
              f"{r['ms_per_step']:>8.2f} {r['vs_ddpm1000']:>10.1f}x {r['vs_ddim50']:>8.2f}x")
    if any(r["extrapolated"] for r in res["rows"]):
        print("* extrapolated from the first steps of the 1000-step run")
    for a in res.get("anchors", []):
        ref = f" (H100 reference {a['reference_h100_ms']} ms)" if "reference_h100_ms" in a else ""
        extra = f", compile {a['compile_seconds']:.0f}s" if "compile_seconds" in a else ""
        print(f"anchor {a['anchor']:14} batch {a['batch']!s:14} {a['variant']:28} {a['ms_per_step']:8.1f} ms/step{ref}{extra}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="cxr64")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None, help="images per sampling run (default 16 on CUDA, 2 on CPU)")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--backends", default="eager,compile,onnx")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default; reduce-overhead; max-autotune)")
    ap.add_argument("--full-ddpm", action="store_true", help="run the 1000-step DDPM baseline in full on CPU too")
    ap.add_argument("--ddpm-probe-steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--anchors", action="store_true", help="also time the H100 anchor shapes (random weights)")
    ap.add_argument("--anchors-only", action="store_true")
    ap.add_argument("--anchor-compile", action="store_true", help="include torch.compile anchors (slow to compile)")
    ap.add_argument("--anchor-iters", type=int, default=10)
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch is None:
        args.batch = 16 if args.device.startswith("cuda") else 2
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.anchors_only:
        res = {"device": args.device, "torch": torch.__version__, "rows": [], "preset": args.preset,
               "resolution": args.resolution, "parameters": 0, "batch": args.batch, "guidance": args.guidance,
               "unet_batch": 0}
        if args.device.startswith("cuda"):
            res["gpu"] = torch.cuda.get_device_name(0)
    else:
        res = run_main(args)
    if args.anchors or args.anchors_only:
        res["anchors"] = run_anchors(args)
    if args.anchors_only:
        for a in res["anchors"]:
            ref = f" (H100 reference {a['reference_h100_ms']} ms)" if "reference_h100_ms" in a else ""
            print(f"anchor {a['anchor']:14} batch {a['batch']!s:14} {a['variant']:28} {a['ms_per_step']:8.1f} ms/step{ref}")
    else:
        print_table(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
