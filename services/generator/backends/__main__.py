"""``python -m services.generator.backends [--json]``: what this machine offers the inference backends
(Python, torch, GPUs, ONNX Runtime execution providers) and what ``auto`` picks on each device."""

from __future__ import annotations

import argparse
import json
import platform


def environment() -> dict:
    import torch

    from services.generator.models.latent_diffusion.loader import BACKENDS as LATENT_DIFFUSION_BACKENDS

    from . import BACKENDS, default_channels_last, default_fp16, resolve_backend

    family_backends = {"stylegan2": BACKENDS, "ddpm": BACKENDS, "latent_diffusion": LATENT_DIFFUSION_BACKENDS}

    def pick(d: str, supported) -> dict:
        b = resolve_backend("auto", d, supported)
        return {"backend": b, "precision": ("fp16" if default_fp16(b, d) else "fp32")
                + (" + channels_last" if default_channels_last(b, d) else "")}

    devices = ["cpu", "cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
           "auto": {d: pick(d, BACKENDS) for d in devices},
           "auto_by_family": {f: {d: pick(d, sup)["backend"] for d in devices} for f, sup in family_backends.items()}}
    try:
        from .onnx_runtime import available_providers, select_providers

        env["onnxruntime_providers"] = available_providers()
        env["onnx_providers_selected"] = {d: [p[0] if isinstance(p, tuple) else p for p in select_providers(d)]
                                          for d in devices if d == "cpu" or torch.cuda.is_available()}
    except ImportError as e:
        env["onnxruntime_providers"] = f"unavailable: {e}"
    return env


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    env = environment()
    if args.json:
        print(json.dumps(env, indent=2))
    else:
        print(f"python {env['python']}, torch {env['torch']}, GPUs: {', '.join(env['gpus']) or 'none'}")
        for d, a in env["auto"].items():
            fams = ", ".join(f"{f} {env['auto_by_family'][f][d]}" for f in env["auto_by_family"])
            print(f"  auto on {d}: {a['backend']} ({a['precision']}); by family: {fams}")
        print(f"  onnxruntime providers: {env['onnxruntime_providers']}")
    return env


if __name__ == "__main__":
    main()
