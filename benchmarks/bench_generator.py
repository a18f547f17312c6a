"""Generator throughput per backend x batch size (images/s), with the ratio to eager fp32 measured in the
same run.

Measures the generator forward (mapping + truncation + synthesis, the module every backend runs) with the
inputs already on the device; ``--e2e`` adds a row per backend for ``LoadedGenerator.generate`` (per-seed
input drawing, transfers, [0,1] conversion).

    python benchmarks/bench_generator.py --device cpu --json bench_cpu.json
    python benchmarks/bench_generator.py --device cuda --arch f256 --batch-sizes 64 --json bench_gpu.json

``--arch cxr64`` is the shipped 64px architecture (random weights unless ``--model ID`` loads real ones);
``--arch f256`` is a config-f-shaped 256px generator (z=w=512, 8 mapping layers, channel_base 32768,
channel_max 512) with random weights, the shape of the anchor numbers (H100: eager fp32 ~370 img/s,
fp16 + channels_last + torch.compile ~2200 img/s at batch 64).

Variants: ``eager`` (fp32), ``eager-fp16cl`` (CUDA: fp16 + channels_last), ``compile`` (fp32),
``compile-fp16cl`` (CUDA: fp16 + channels_last + torch.compile), ``onnx`` (ONNX Runtime; CPU EP here, CUDA/
TensorRT EPs when onnxruntime-gpu is installed; skipped on CUDA when only the CPU EP exists).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from services.generator.models.stylegan2.network import (Generator, GeneratorExport, StyleGAN2Config,  # noqa: E402
                                                         count_params, encode_conditions)

ARCHS = {
    "cxr64": {},
    "f256": dict(resolution=256, z_dim=512, w_dim=512, mapping_layers=8, channel_base=32768, channel_max=512),
}


def make_generator(arch: str, model: str | None) -> Generator:
    if model:
        from services.generator import registry
        from services.generator.models.stylegan2.loader import load_weights

        desc, wpath = registry.resolve(model)
        return load_weights(wpath, desc.get("config"))
    torch.manual_seed(0)
    G = Generator(StyleGAN2Config.from_dict(ARCHS[arch])).eval().requires_grad_(False)
    with torch.no_grad():  # random but "trained-looking" magnitudes: non-zero noise strengths
        for m in G.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.1)
    return G


def inputs(E: GeneratorExport, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    G = E.G
    z = torch.randn(n, G.z_dim, generator=g)
    c = encode_conditions(torch.randint(0, 3, (n, max(G.cfg.num_findings, 1)), generator=g), G.cfg.num_findings)
    return (z, c, torch.zeros(n, G.w_dim), torch.ones(n, 1), torch.randn(n, E.noise_dim(), generator=g))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn, device: str, n_img: int, min_seconds: float, warmup: int, max_iters: int = 10_000) -> dict:
    for _ in range(warmup):
        fn()
    sync(device)
    iters = 0
    t0 = time.perf_counter()
    while True:
        fn()
        iters += 1
        if iters % 2 == 0 or iters == 1:
            sync(device)
            el = time.perf_counter() - t0
            if el >= min_seconds or iters >= max_iters:
                break
    sync(device)
    el = time.perf_counter() - t0
    return {"iters": iters, "seconds": el, "img_s": n_img * iters / el, "ms_per_batch": 1000 * el / iters}


def make_variant(name: str, E: GeneratorExport, device: str, bs: int, cache_dir: Path, compile_mode: str | None):
    """Returns (callable with no args, description) or raises RuntimeError('skip: ...')."""
    from services.generator.backends import TorchRunner

    cuda = device.startswith("cuda")
    ins = inputs(E, bs)
    if name.startswith("eager") or name.startswith("compile"):
        fp16cl = name.endswith("fp16cl")
        if fp16cl and not cuda:
            raise RuntimeError("skip: fp16 + channels_last is a CUDA variant")
        import copy

        r = TorchRunner(copy.deepcopy(E), device, compile=name.startswith("compile"), fp16=fp16cl, channels_last=fp16cl,
                        compile_mode=compile_mode)
        xs = [t.to(device).to(r.dtype) if t.is_floating_point() else t.to(device) for t in ins]

        def fn():
            with torch.inference_mode():
                return r.fn(*xs)

        return fn, ("fp16+channels_last" if fp16cl else "fp32")
    if name == "onnx":
        from services.generator.backends.onnx_runtime import OnnxRunner, available_providers, export_onnx, select_providers

        provs = select_providers(device, cache_dir=cache_dir)
        if cuda and len(provs) == 1:
            raise RuntimeError(f"skip: onnxruntime has no GPU provider here (available: {available_providers()})")
        path = cache_dir / f"bench-{E.G.img_resolution}.onnx"
        if not path.exists():
            export_onnx(E.float().cpu(), inputs(E, 2), path, GeneratorExport.input_names, ("img",))
        r = OnnxRunner(path, device=device, providers=provs)
        import numpy as np

        feeds = {n: np.ascontiguousarray(t.numpy()) for n, t in zip(r.input_names, ins)}

        def fn():
            return r.session.run(None, feeds)

        return fn, "fp32 " + ",".join(r.active_providers)
    raise RuntimeError(f"unknown variant {name}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", choices=list(ARCHS), default="cxr64")
    ap.add_argument("--model", default=None, help="load a registered model's weights instead of random ones")
    ap.add_argument("--variants", default=None, help="comma list (default: cpu eager,compile,onnx; "
                                                       "cuda eager,eager-fp16cl,compile-fp16cl,onnx)")
    ap.add_argument("--batch-sizes", default=None, help="comma list (default cpu 1,8,32; cuda 1,16,64)")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per cell")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default / reduce-overhead / max-autotune)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls for fp32 variants on CUDA")
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--check", action="store_true", help="also report max |variant - eager fp32| per variant")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
    torch.backends.cudnn.benchmark = True
    variants = (args.variants or ("eager,eager-fp16cl,compile-fp16cl,onnx" if cuda else "eager,compile,onnx")).split(",")
    if "eager" not in variants:
        variants = ["eager"] + variants
    sizes = [int(s) for s in (args.batch_sizes or ("1,16,64" if cuda else "1,8,32")).split(",")]
    G = make_generator(args.arch, args.model)
    E = GeneratorExport(G).eval()
    cache_dir = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    dev_name = torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine())
    meta = {"device": device, "device_name": dev_name, "arch": args.arch, "model": args.model,
            "resolution": G.img_resolution, "params_G": count_params(G), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "tf32": bool(args.tf32),
            "compile_mode": args.compile_mode or "default", "min_seconds": args.seconds}
    try:
        import onnxruntime as ort

        meta["onnxruntime"] = ort.__version__
        meta["ort_providers"] = ort.get_available_providers()
    except Exception:
        pass
    print(f"# generator benchmark: {meta}", flush=True)
    results = []
    base: dict[int, float] = {}
    ref_out: dict[int, torch.Tensor] = {}
    for bs in sizes:
        for v in variants:
            row = {"variant": v, "batch": bs}
            try:
                t0 = time.perf_counter()
                fn, desc = make_variant(v, E, device, bs, cache_dir, args.compile_mode)
                out = fn()  # first call: compiles / builds engines
                sync(device)
                row["setup_s"] = round(time.perf_counter() - t0, 2)
                row["precision"] = desc
                row.update(time_fn(fn, device, bs, args.seconds, args.warmup))
                if args.check:
                    o = out[0] if isinstance(out, list) else out
                    o = torch.as_tensor(o).float().cpu()
                    if v == "eager":
                        ref_out[bs] = o
                    elif bs in ref_out:
                        row["max_abs_diff_vs_eager"] = float((o - ref_out[bs]).abs().max())
            except RuntimeError as e:
                if str(e).startswith("skip:"):
                    row["skipped"] = str(e)[5:].strip()
                else:
                    row["error"] = repr(e)[:300]
            except Exception as e:  # keep going: one failing backend must not lose the table
                row["error"] = repr(e)[:300]
            if v == "eager" and "img_s" in row:
                base[bs] = row["img_s"]
            if "img_s" in row and bs in base:
                row["ratio_vs_eager_fp32"] = row["img_s"] / base[bs]
            results.append(row)
            print(_fmt(row), flush=True)
    print()
    print(table(results, meta))
    out = {"meta": meta, "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return out


def _fmt(r: dict) -> str:
    if "img_s" in r:
        return (f"  {r['variant']:<16} bs={r['batch']:<4} {r['img_s']:>10.1f} img/s  x{r.get('ratio_vs_eager_fp32', 1):.2f}"
                f"  ({r['precision']}, setup {r['setup_s']}s)")
    return f"  {r['variant']:<16} bs={r['batch']:<4} {r.get('skipped') or r.get('error')}"


def table(results: list[dict], meta: dict) -> str:
    from services.generator.models.stylegan2.card import throughput_table

    return throughput_table({"meta": meta, "results": results}).markdown()


if __name__ == "__main__":
    main()
