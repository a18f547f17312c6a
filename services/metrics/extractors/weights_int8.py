"""Carry float32 weights to a device machine as int8 (per output channel), e.g. the 87 MB FID Inception state
dict that cannot travel within the 64 MiB working-tree limit (``scripts/gpu/metrics.sh``).

    python -m services.metrics.extractors.weights_int8 quantize-fid .gpu/metrics/fid_inception.int8.pth   # dev machine
    python3 -m services.metrics.extractors.weights_int8 dequantize .gpu/metrics/fid_inception.int8.pth /tmp/fid.pth   # device

Conv kernels (``*conv.weight``) become ``<name>.int8`` + ``<name>.scale`` (max |w| per output channel / 127);
everything else (BN vectors, the fc layer) stays as it is. ``dequantize`` needs only torch (no synthrad
settings, no pydantic), so it runs on a bare device machine.
"""

from __future__ import annotations

import argparse

import torch


def quantize(state_dict: dict[str, torch.Tensor], suffix: str = "conv.weight") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.endswith(suffix):
            scale = v.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12) / 127.0
            out[k + ".int8"] = torch.round(v / scale).to(torch.int8)
            out[k + ".scale"] = scale.float()
        else:
            out[k] = v
    return out


def dequantize(q: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for k, v in q.items():
        if k.endswith(".int8"):
            base = k[: -len(".int8")]
            sd[base] = v.float() * q[base + ".scale"]
        elif not k.endswith(".scale"):
            sd[k] = v
    return sd


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("quantize-fid", help="the FID Inception weights (services.metrics) -> int8 file")
    p.add_argument("out")
    p = sub.add_parser("dequantize", help="int8 file -> float32 state dict")
    p.add_argument("src")
    p.add_argument("out")
    a = ap.parse_args(argv)
    if a.cmd == "quantize-fid":
        from services.metrics.extractors.inception import load_inception_weights

        torch.save(quantize(load_inception_weights().state_dict), a.out)
    else:
        torch.save(dequantize(torch.load(a.src, weights_only=True)), a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
