"""De-identification of study images: every image, real or synthetic, leaves here the same way.

One recipe for both sources, so that nothing but the pixels differs: greyscale float [0, 1] -> shorter side
resized to the study's size and centre-cropped (``datasets.preprocess.resize_center_crop``, the training-input
recipe) -> 8-bit greyscale PNG written by Pillow with no ancillary chunks at all (no text, time, gamma, physical
size or ICC profile: only IHDR, IDAT and IEND), so neither a PNG chunk, nor the image size, nor a file name
(images are served under random ids) tells a reader where an image came from.
"""

from __future__ import annotations

import hashlib
import io
import struct

import numpy as np
from PIL import Image

from services.common.datasets.preprocess import resize_center_crop

#: the only PNG chunks a study image has
ALLOWED_CHUNKS = (b"IHDR", b"IDAT", b"IEND")


def deidentified_png(img: np.ndarray, size: int) -> bytes:
    """float32 HxW [0, 1] (or HxWxC, averaged to grey) -> PNG bytes of a size x size 8-bit greyscale image."""
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 3:
        img = img.mean(-1)
    pixels = resize_center_crop(np.clip(img, 0.0, 1.0), size)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    data = buf.getvalue()
    extra = [c for c in png_chunks(data) if c not in ALLOWED_CHUNKS]
    if extra:  # a Pillow release that starts writing metadata must not leak it silently
        raise RuntimeError(f"de-identified PNG carries chunks {extra}")
    return data


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG file, in order."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append(kind)
        pos += 12 + length
    return out


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = ["ALLOWED_CHUNKS", "deidentified_png", "png_chunks", "sha256"]
