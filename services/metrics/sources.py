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

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".dcm", ".dicom", ".npz"}
# raster types the shared codec does not dispatch on: decoded with PIL, converted by the codec's ``pil_to_unit``
_PIL_ONLY = {".webp", ".pgm", ".ppm"}
# raster types that may hold colour (RGB) pixels worth keeping for the colourfulness measure
_COLOUR_RASTERS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


def _strip_name(msg: str, label: str) -> str:
    """The codec's messages start with the file name; avoid naming it twice."""
    for prefix in (f"{label}: ", f"{Path(label).name}: "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _colour_pixels(src) -> np.ndarray | None:
    """(H, W, 3) float32 [0, 1] when ``src`` is an 8-bit colour raster whose channels differ, else None.

    The shared codec defines every greyscale pixel (it converts colour to luminance); only genuinely colour
    images keep their channels here, for the colourfulness measure and RGB extractors."""
    from PIL import Image

    with Image.open(src) as im:
        if im.mode not in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA"):
            return None
        im.load()
        if im.mode in ("P", "PA") and not any(
            r != g or g != b for r, g, b in zip(*[iter((im.getpalette() or [])[:768])] * 3)
        ):
            return None
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 1], a[:, :, 2]):
        return None
    return a


def read_image(path: str | os.PathLike | None = None, data: bytes | None = None, name: str | None = None) -> np.ndarray:
    """Decode an image file → float32 [0, 1] through the shared codec (``services.common.codecs``).

    Pixels are defined by ``read_image_file`` / ``decode_image`` — the same reader the store, the gateway and the
    datasets use (DICOM modality/VOI LUTs and MONOCHROME1, 16-bit PNGs, NPZ, sniffed types). Returns (H, W);
    an 8-bit colour raster whose channels differ is returned as (H, W, 3) (the codec's luminance would drop
    the colour). Formats the codec does not dispatch on (.webp, .pgm, .ppm) go through PIL and the codec's
    ``pil_to_unit``. Any failure is a :class:`MetricsError` naming the file.
    """
    from services.common.codecs import decode_image, read_image_file
    from services.common.codecs.png import pil_to_unit

    label = str(name or path)
    suffix = Path(str(name or path or "")).suffix.lower()
    try:
        if data is None and path is None:
            raise MetricsError("read_image needs a path or data")
        if suffix in _PIL_ONLY:
            from PIL import Image

            with Image.open(io.BytesIO(data) if data is not None else path) as im:
                im.load()
                a = pil_to_unit(im)
        elif data is not None:
            a, _ = decode_image(data, label)
        else:
            a = read_image_file(path)
        a = np.asarray(a, dtype=np.float32)
        if suffix in _COLOUR_RASTERS:
            colour = _colour_pixels(io.BytesIO(data) if data is not None else path)
            if colour is not None:
                return colour
    except MetricsError:
        raise
    except Exception as e:  # noqa: BLE001  (CorruptImageError, OSError, PIL's many types)
        raise MetricsError(f"cannot read image {label}: {_strip_name(str(e), label)}") from e
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
        # every stored file checked against the manifest's sha256 before anything is read for scoring:
        # raises BatchNotFound / InvalidBatchId, and BatchDamaged for a missing, corrupt or swapped file
        self.manifest = self.store.verify(batch_id)
        self.description = f"batch {batch_id} ({self.manifest.count} images) in {store_url}"
        self._hash: str | None = None

    def __len__(self) -> int:
        return self.manifest.count

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "BatchSource":
        """A stored batch given as its folder (``<store>/<batch_id>/`` holding ``manifest.json``), any format."""
        from services.common.store import StoreError

        folder = Path(folder).expanduser().resolve()
        if not (folder / "manifest.json").is_file():
            raise MetricsError(f"{folder} is not a stored batch (no manifest.json)")
        try:
            return cls(folder.name, str(folder.parent))
        except StoreError as e:  # InvalidBatchId, BatchNotFound, BatchDamaged (incl. a manifest that does not parse)
            raise MetricsError(f"cannot open stored batch {folder}: {e}") from e

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, str]]:
        from services.common.store import StoreError

        records = self.manifest.images
        it = self.store.iter_images(self.batch_id)
        i = 0
        while True:
            try:
                rec, img = next(it)
            except StopIteration:
                return
            except (StoreError, ValueError, OSError) as e:  # BatchDamaged, CorruptImageError, unreadable files
                where = _record_name(records[i]) if i < len(records) else f"image {i}"
                raise MetricsError(f"cannot read image {where} of batch {self.batch_id} ({self.store.url}): {e}") from e
            i += 1
            yield _record_name(rec), np.asarray(img, dtype=np.float32), rec.condition.key()

    def content_hash(self) -> str:
        """Committed batches are immutable: hash the batch id + the manifest's JSON (no pixel reads)."""
        if self._hash is None:
            body = self.manifest.to_json(indent=None).decode()  # unscreened batches hash as before screening
            self._hash = hashlib.sha256(f"batch-v1|{self.batch_id}|{body}".encode()).hexdigest()
        return self._hash


def _record_name(rec) -> str:
    """An image record's name: its shard member (webdataset) or its file."""
    return str(rec.member or rec.file)


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
