"""Read any supported image file (PNG, JPEG, DICOM, NPZ, ...) into the float [0, 1] HxW convention."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import decode_image
from .errors import CorruptImageError

# magic bytes -> a file name suffix that decode_image dispatches on
_MAGIC = [(b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"PK\x03\x04", ".npz"), (b"II*\x00", ".tif"),
          (b"MM\x00*", ".tif"), (b"BM", ".bmp")]


def sniff_suffix(data: bytes) -> str | None:
    """Guess a file's type from its first bytes (for files without or with a wrong extension)."""
    if data[128:132] == b"DICM":
        return ".dcm"
    for magic, suffix in _MAGIC:
        if data.startswith(magic):
            return suffix
    return None


def read_image_file(path: str | Path, with_meta: bool = False):
    """File -> float32 HxW in [0, 1] (and its metadata when ``with_meta``); CorruptImageError names the file."""
    path = Path(path)
    data = path.read_bytes()
    if not data:
        raise CorruptImageError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    sniffed = sniff_suffix(data)
    if suffix not in (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".npz", ".tif", ".tiff", ".bmp"):
        suffix = sniffed or ".dcm"  # DICOM files often have no extension or a numeric one
    elif sniffed and sniffed != suffix and not (sniffed == ".jpg" and suffix == ".jpeg"):
        suffix = sniffed  # trust the content over a misleading extension
    try:
        img, meta = decode_image(data, str(path.with_suffix(suffix)))
    except CorruptImageError as e:
        raise CorruptImageError(str(e).replace(str(path.with_suffix(suffix)), str(path), 1)) from e
    img = np.asarray(img, dtype=np.float32)
    return (img, meta) if with_meta else img
