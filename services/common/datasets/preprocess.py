"""Greyscale -> resize shorter side (antialiased) -> center crop -> uint8, the training-input recipe."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_center_crop(img: np.ndarray, resolution: int) -> np.ndarray:
    """float [0, 1] HxW -> uint8 (resolution, resolution)."""
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a greyscale HxW image, got shape {img.shape}")
    h, w = img.shape
    scale = resolution / min(h, w)
    nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    pil = Image.fromarray(img, mode="F")
    if (nh, nw) != (h, w):
        # PIL widens the filter support when shrinking, i.e. it antialiases.
        pil = pil.resize((nw, nh), Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.BILINEAR)
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    out = np.asarray(pil)[top:top + resolution, left:left + resolution]
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
