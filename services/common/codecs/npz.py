"""NPZ: the float32 array itself (lossless) plus the provenance JSON."""

from __future__ import annotations

import io
import zipfile

import numpy as np

from ..provenance import Provenance
from .errors import CorruptImageError
from .pixels import from_uint


def encode_npz(img: np.ndarray, provenance: Provenance | None = None) -> bytes:
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a greyscale HxW image, got shape {img.shape}")
    arrays = {"image": img}
    if provenance is not None:
        arrays["provenance"] = np.array(provenance.to_json())
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def decode_npz(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, dict]:
    """NPZ bytes -> (float32 HxW in [0, 1], {"provenance": ...} when present). Accepts a lone array too."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise CorruptImageError(f"{name}: not a readable NPZ file ({e})") from e
    images = [k for k, v in arrays.items() if v.ndim >= 2]
    key = "image" if "image" in arrays else (images[0] if len(images) == 1 else None)
    if key is None:
        raise CorruptImageError(f"{name}: NPZ holds no array named 'image' (found: {', '.join(arrays) or 'nothing'})")
    img = np.squeeze(arrays[key])
    if img.ndim != 2:
        raise CorruptImageError(f"{name}: expected a 2-D image in {key!r}, got shape {arrays[key].shape}")
    meta: dict = {}
    if "provenance" in arrays:
        meta["provenance"] = Provenance.from_json(str(arrays["provenance"]))
    try:
        return from_uint(img), meta
    except ValueError as e:
        raise CorruptImageError(f"{name}: {e}; store float [0, 1], uint8 or uint16 pixels") from e
