"""Conversions between the float [0, 1] image convention and integer pixel data."""

from __future__ import annotations

import numpy as np


def to_uint(img: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """float [0, 1] HxW -> uint8 / uint16 (rounded, clipped). Integer input of the right type passes through."""
    img = np.asarray(img)
    if img.ndim != 2:
        raise ValueError(f"expected a greyscale HxW image, got shape {img.shape}")
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    if img.dtype == dtype:
        return img
    if np.issubdtype(img.dtype, np.integer):
        raise ValueError(f"cannot store {img.dtype} pixels as {bit_depth}-bit without rescaling; pass float [0, 1]")
    peak = 255.0 if bit_depth == 8 else 65535.0
    return np.clip(np.rint(img.astype(np.float64) * peak), 0, peak).astype(dtype)


def from_uint(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"unsupported pixel type {arr.dtype}")
