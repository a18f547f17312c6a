"""Image sets to score: a folder of images, a stored batch, in-memory arrays, or a feature file.

Every source yields ``(name, image, label)`` with ``image`` float32 (H, W) or (H, W, 3) in [0, 1] and
``label`` a class string (sub-folder name for folders, condition key for stored batches, ``"all"`` otherwise),
and has a ``content_hash()`` that identifies its pixels so cached features can be reused.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from services.metrics.errors import MetricsError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".dcm"}


def read_image(path: str | os.PathLike | None = None, data: bytes | None = None, name: str | None = None) -> np.ndarray:
    """Decode an image file → float32 [0, 1]; (H, W) if greyscale (also RGB files whose channels are equal)."""
    label = name or str(path)
    try:
        if str(path or name or "").lower().endswith(".dcm"):
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data) if data is not None else str(path))
            a = ds.pixel_array.astype(np.float32)
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
            if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
                a = 1.0 - a
            return a
        from PIL import Image

        with Image.open(io.BytesIO(data) if data is not None else path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float32)
                return a / (65535.0 if a.max() > 255 else 255.0)
            if mode in ("L", "P", "1", "LA"):
                return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except MetricsError:
        raise
    except Exception as e:  # noqa: BLE001
        raise MetricsError(f"cannot read image {label}: {e}") from e
    if np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 1], a[:, :, 2]):
        return np.ascontiguousarray(a[:, :, 0])
    return a


class ImageSource:
    kind = "images"
    description = ""

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def content_hash(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def images(self) -> Iterator[np.ndarray]:
        for _, im, _ in self:
            yield im


class FolderSource(ImageSource):
    """All image files under ``root`` (recursive, sorted). Label = first sub-folder name, or ``all``."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike, limit: int | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MetricsError(f"{self.root} is not a folder")
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if limit is not None:
            files = files[:limit]
        self.files = files
        self.description = f"folder {self.root} ({len(files)} images)"
        self._hash: str | None = None

    def __len__(self) -> int:
        return len(self.files)

    def label_of(self, p: Path) -> str:
        rel = p.relative_to(self.root)
        return rel.parts[0] if len(rel.parts) > 1 else "all"

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, str]]:
        for p in self.files:
            yield str(p.relative_to(self.root)), read_image(p), self.label_of(p)

    def content_hash(self) -> str:
        """sha256 over (relative name, file sha256) of every file — cheap, no decoding."""
        if self._hash is None:
            h = hashlib.sha256(b"folder-v1")
            for p in self.files:
                h.update(str(p.relative_to(self.root)).encode())
                h.update(hashlib.sha256(p.read_bytes()).digest())
            self._hash = h.hexdigest()
        return self._hash


class ArraySource(ImageSource):
    """In-memory images (tests, generated arrays)."""

    kind = "arrays"

    def __init__(self, images: Sequence[np.ndarray] | np.ndarray, labels: Sequence[str] | None = None, name: str = "arrays") -> None:
        arrs = []
        for im in images:
            a = np.asarray(im, dtype=np.float32)
            if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):  # channel-first (C, H, W)
                a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
            if a.ndim == 3 and a.shape[2] == 1:
                a = a[:, :, 0]
            if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
                raise MetricsError(f"{name}: expected images (H, W), (H, W, 3) or (C, H, W); got shape {a.shape}")
            arrs.append(a)
        self.arrays = arrs
        self.labels = list(labels) if labels is not None else ["all"] * len(self.arrays)
        if len(self.labels) != len(self.arrays):
            raise MetricsError("labels and images differ in length")
        self.description = f"{name} ({len(self.arrays)} images)"
        self._hash: str | None = None

    def __len__(self) -> int:
        return len(self.arrays)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, str]]:
        for i, (a, l) in enumerate(zip(self.arrays, self.labels)):
            yield f"{i:06d}", a, l

    def content_hash(self) -> str:
        if self._hash is None:
            h = hashlib.sha256(b"arrays-v1")
            for a, l in zip(self.arrays, self.labels):
                h.update(str(a.shape).encode())
                h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
                h.update(l.encode())
            self._hash = h.hexdigest()
        return self._hash


class BatchSource(ImageSource):
    """A committed batch in the BatchStore (``services.common.store``). Label = the image's condition key."""

    kind = "batch"

    def __init__(self, batch_id: str, store_url: str | None = None) -> None:
        from services.common.store import BatchStore

        if store_url is None:
            from services.common.config import get_settings

            store_url = get_settings().resolved_store_url
        self.store = BatchStore(store_url)
        self.batch_id = batch_id
        self.manifest = self.store.get(batch_id)  # raises BatchNotFound / InvalidBatchId
        self.n = _manifest_count(self.manifest)
        self.description = f"batch {batch_id} ({self.n if self.n is not None else '?'} images) in {store_url}"
        self._hash: str | None = None

    def __len__(self) -> int:
        if self.n is None:
            self.n = sum(1 for _ in self.store.iter_images(self.batch_id))
        return self.n

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, str]]:
        for rec, img in self.store.iter_images(self.batch_id):
            yield _record_name(rec), np.asarray(img, dtype=np.float32), _record_label(rec)

    def content_hash(self) -> str:
        """Committed batches are immutable: hash the batch id + the manifest's JSON (no pixel reads)."""
        if self._hash is None:
            m = self.manifest
            if hasattr(m, "model_dump_json"):
                body = m.model_dump_json()
            else:
                body = repr(m)
            self._hash = hashlib.sha256(f"batch-v1|{self.batch_id}|{body}".encode()).hexdigest()
        return self._hash


def _manifest_count(m: object) -> int | None:
    for attr in ("count", "n_images", "num_images"):
        v = getattr(m, attr, None)
        if isinstance(v, int):
            return v
    for attr in ("images", "records"):
        v = getattr(m, attr, None)
        if isinstance(v, (list, tuple)):
            return len(v)
    return None


def _record_name(rec: object) -> str:
    for attr in ("name", "file", "filename", "path"):
        v = getattr(rec, attr, None)
        if v:
            return str(v)
    return str(getattr(rec, "index", "?"))


def _record_label(rec: object) -> str:
    cond = getattr(rec, "condition", None)
    if cond is None:
        return "all"
    if hasattr(cond, "key"):
        return cond.key()
    if isinstance(cond, dict):
        try:
            from services.common.findings import Condition

            return Condition(**cond).key()
        except Exception:  # noqa: BLE001
            return "all"
    return str(cond)


def is_feature_file(s: str) -> bool:
    return s.lower().endswith(".npy") and Path(s).is_file()


def load_feature_file(path: str | os.PathLike) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise MetricsError(f"cannot read feature file {path}: {e}") from e
    if a.ndim != 2:
        raise MetricsError(f"feature file {path} must hold a 2-D array (n_images, dims); got shape {a.shape}")
    if not np.isfinite(a).all():
        raise MetricsError(f"feature file {path} contains NaN or inf")
    return a
