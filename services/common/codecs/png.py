"""PNG 8/16-bit greyscale with provenance in text chunks (key ``synthrad`` = provenance JSON)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin

from ..provenance import Provenance
from .errors import CorruptImageError
from .pixels import from_uint, to_uint


def encode_png(img: np.ndarray, provenance: Provenance | None = None, bit_depth: int = 8) -> bytes:
    if bit_depth not in (8, 16):
        raise ValueError(f"PNG bit depth must be 8 or 16, got {bit_depth}")
    data = to_uint(img, bit_depth)
    pil = Image.fromarray(data)  # uint8 -> "L", uint16 -> "I;16"
    info = PngImagePlugin.PngInfo()
    if provenance is not None:
        info.add_text("synthrad", provenance.to_json())
        info.add_text("Software", "synthrad")
        info.add_text("Description", provenance.notice())
        info.add_text("Comment", "SYNTHETIC image: not a real patient")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", pnginfo=info, optimize=False, compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, dict]:
    """PNG bytes -> (float32 HxW in [0, 1], text chunks; ``provenance`` parsed when present)."""
    try:
        pil = Image.open(io.BytesIO(data))
        pil.load()
    except Exception as e:  # PIL raises many types for corrupt data
        raise CorruptImageError(f"{name}: not a readable PNG ({e})") from e
    meta: dict = dict(getattr(pil, "text", {}) or {})
    if "synthrad" in meta:
        meta["provenance"] = Provenance.from_json(meta["synthrad"])
    return pil_to_unit(pil), meta


def pil_to_unit(pil: Image.Image) -> np.ndarray:
    """Any PIL image -> float32 greyscale in [0, 1] (16-bit kept at full precision, RGB -> luminance)."""
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(pil).astype(np.float32)
        return np.clip(arr / 65535.0, 0.0, 1.0)
    if pil.mode not in ("L",):
        pil = pil.convert("L")
    return from_uint(np.asarray(pil))
