"""Image codecs. Arrays are float32 HxW in [0, 1]; every encoder writes the synthetic provenance.

Formats of stored images: ``png`` (8-bit), ``png16``, ``dicom``, ``npz``. ``webdataset`` batches store
PNG members inside tar shards (see ``webdataset.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..provenance import Provenance
from .errors import CorruptImageError

IMAGE_FORMATS = ("png", "png16", "dicom", "npz")
EXTENSIONS = {"png": ".png", "png16": ".png", "dicom": ".dcm", "npz": ".npz"}


def encode_image(img: np.ndarray, fmt: str, provenance: Provenance | None,
                 instance_number: int = 1) -> tuple[str, bytes]:
    """Encode one image; returns (file extension, bytes). ``instance_number`` (1-based position in the
    batch) is written by formats that record one (DICOM InstanceNumber)."""
    if fmt in ("png", "png16"):
        from .png import encode_png

        return ".png", encode_png(img, provenance, bit_depth=16 if fmt == "png16" else 8)
    if fmt == "dicom":
        from .dicom import encode_dicom

        return ".dcm", encode_dicom(img, provenance, instance_number=instance_number)
    if fmt == "npz":
        from .npz import encode_npz

        return ".npz", encode_npz(img, provenance)
    raise ValueError(f"unknown image format {fmt!r}; use one of {', '.join(IMAGE_FORMATS)}")


def decode_image(data: bytes, name: str) -> tuple[np.ndarray, dict]:
    """Decode by file extension; returns (float32 HxW [0, 1], metadata incl. ``provenance`` when present)."""
    suffix = Path(name).suffix.lower()
    if suffix == ".png":
        from .png import decode_png

        return decode_png(data, name)
    if suffix in (".dcm", ".dicom"):
        from .dicom import decode_dicom

        return decode_dicom(data, name)
    if suffix == ".npz":
        from .npz import decode_npz

        return decode_npz(data, name)
    if suffix in (".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        import io

        from PIL import Image

        from .png import pil_to_unit

        try:
            pil = Image.open(io.BytesIO(data))
            pil.load()
        except Exception as e:
            raise CorruptImageError(f"{name}: not a readable image ({e})") from e
        return pil_to_unit(pil), {}
    raise CorruptImageError(f"{name}: unsupported image type {suffix!r}")


__all__ = ["IMAGE_FORMATS", "EXTENSIONS", "CorruptImageError", "encode_image", "decode_image", "read_image_file"]
from .files import read_image_file  # noqa: E402  (files.py imports decode_image from here)
