"""``cxr-encoder``: a small chest-X-ray CNN trained in this repo on labelled real data, 128-d embedding.

Why: Inception-V3 was trained on ImageNet photographs; its features are the convention (FID) but not
specialised to radiographs. This encoder was trained (``python -m services.metrics.extractors.train_cxr_encoder``)
on NIH ChestX-ray14 64 px (findings, multi-label) and Kermany paediatric pneumonia (normal / bacterial / viral)
images, so its embedding separates radiological content. Scores made with it are named ``FD_cxr-encoder``,
``KID_cxr-encoder`` etc. — never FID.

Preprocessing (stamped): greyscale (RGB → mean of channels), ``F.interpolate(64×64, bilinear, antialias=True)``,
``(x − 0.5) / 0.25``. Weights: ``cxr-encoder-64.safetensors`` beside this module (shipped; sha256 verified at load).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from services.metrics.errors import MetricsError
from services.metrics.extractors.base import ExtractorStamp, FeatureExtractor

WEIGHTS_FILE = Path(__file__).parent / "cxr-encoder-64.safetensors"
SIZE = 64
EMBED = 128
KERMANY_CLASSES = ("normal", "bacteria", "virus")
NIH_LABELS = ("atelectasis", "effusion", "cardiomegaly", "opacity", "no_finding")
PREPROCESSING = {
    "resize": "bilinear",
    "size": SIZE,
    "antialias": True,
    "grey_to_rgb": "n/a (RGB → channel mean, 1 channel)",
    "input_range": [0.0, 1.0],
    "normalise": "(x - 0.5) / 0.25",
}


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + self.skip(x))


class CXREncoder(nn.Module):
    """ResNet-ish 64 px encoder: stride-2 stem (32 px) → 32/64/128/256 stages → GAP → 128-d embedding (+ heads)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), embed: int = EMBED) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(_Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.embed = nn.Linear(cin, embed)
        self.head_kermany = nn.Linear(embed, len(KERMANY_CLASSES))
        self.head_nih = nn.Linear(embed, len(NIH_LABELS))
        self.head_source = nn.Linear(embed, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))
        return self.embed(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.features(x)
        a = F.relu(z)
        return z, self.head_kermany(a), self.head_nih(a), self.head_source(a)


def preprocess(images: Sequence[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    outs = []
    for im in images:
        g = im.mean(axis=2) if im.ndim == 3 else im
        t = torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32))[None, None].to(device)
        if t.shape[-2:] != (SIZE, SIZE):
            t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
        outs.append(t)
    return (torch.cat(outs, 0) - 0.5) / 0.25


class CXREncoderExtractor(FeatureExtractor):
    name = "cxr-encoder"
    dims = EMBED
    default_batch_size = 128

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "cpu", dtype: str = "float32", **_: object) -> None:
        from safetensors.torch import load_file
        from safetensors import safe_open

        path = Path(weights) if weights else WEIGHTS_FILE
        if not path.is_file():
            raise MetricsError(
                f"cxr-encoder weights not found at {path}; they ship with synthrad "
                "(services/metrics/extractors/) or can be rebuilt with "
                "`python -m services.metrics.extractors.train_cxr_encoder` (needs ../shared/data)."
            )
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        expected = meta.get("tensor_sha256")
        sd = load_file(str(path))
        th = hashlib.sha256(b"".join(sd[k].float().numpy().tobytes() for k in sorted(sd))).hexdigest()
        if expected and th != expected:
            raise MetricsError(f"{path}: weights corrupted (tensor sha256 {th} != {expected})")
        self.net = CXREncoder()
        self.net.load_state_dict({k: v.float() for k, v in sd.items()})
        self.device = torch.device(device)
        self.net.eval().requires_grad_(False).to(self.device)
        self.meta = {k: (json.loads(v) if v.startswith(("{", "[")) else v) for k, v in meta.items()}
        self.stamp = ExtractorStamp(
            name=self.name,
            arch="CXREncoder resnet-ish 64px, 128-d embedding (trained on NIH CXR14-64 + Kermany-224)",
            dims=self.dims,
            weights_sha256=th,
            weights_file_sha256=sha,
            weights_source=str(path.name),
            preprocessing=dict(PREPROCESSING),
            dtype=dtype,
        )

    @torch.inference_mode()
    def extract_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        x = preprocess(list(images), self.device)
        return self.net.features(x).float().cpu().numpy()
