"""``XrayDataset``: records -> (image float32 (1, R, R) in [-1, 1], codes LongTensor(4)).

Images are preprocessed once into a uint8 ``.npy`` file (memory-mapped) in the cache folder, keyed by a
hash of the file list, their sizes and mtimes, and the resolution, so a second run starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..codecs.errors import CorruptImageError
from ..codecs.files import read_image_file
from ..logging import get_logger
from .preprocess import resize_center_crop
from .records import Record

CACHE_VERSION = 1
log = get_logger("datasets")


def _load(record: Record, resolution: int) -> np.ndarray:
    return resize_center_crop(read_image_file(record.path), resolution)


def cache_key(records: Sequence[Record], resolution: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{resolution}".encode())
    for r in records:
        st = os.stat(r.path)
        h.update(f"\0{os.path.abspath(r.path)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


class XrayDataset(Dataset):
    """Preprocessed chest X-rays. ``cache_dir``: "auto" (settings cache folder), a folder, or None (no cache:
    images are decoded on every access). ``on_error``: "raise" on an unreadable image, or "skip" it."""

    def __init__(self, records: Sequence[Record], resolution: int, cache_dir: str | Path | None = "auto",
                 on_error: str = "raise", workers: int = 4, progress: bool = False):
        if resolution < 8:
            raise ValueError(f"resolution must be at least 8, got {resolution}")
        if on_error not in ("raise", "skip"):
            raise ValueError("on_error must be 'raise' or 'skip'")
        self.resolution, self.records = resolution, list(records)
        self._array: np.ndarray | None = None
        self.cache_path: Path | None = None
        if cache_dir is not None:
            if cache_dir == "auto":
                from ..config import get_settings

                cache_dir = get_settings().resolved_cache_dir / "datasets"
            self.cache_path = Path(cache_dir) / f"xray-{resolution}-{cache_key(self.records, resolution)}.npy"
            self.records = self._build(on_error, workers, progress)
        elif on_error == "skip":
            raise ValueError("on_error='skip' needs a cache_dir (unreadable images are found while caching)")

    # ---- cache -------------------------------------------------------------------------
    def _build(self, on_error: str, workers: int, progress: bool) -> list[Record]:
        path, kept_path = self.cache_path, self.cache_path.with_suffix(".kept.json")
        if path.exists() and kept_path.exists():
            kept = json.loads(kept_path.read_text())
            return [self.records[i] for i in kept]
        path.parent.mkdir(parents=True, exist_ok=True)
        n, res = len(self.records), self.resolution
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, res, res))
        kept: list[int] = []

        def work(i: int):
            try:
                return i, _load(self.records[i], res)
            except CorruptImageError as e:
                if on_error == "raise":
                    raise CorruptImageError(f"{e}; fix or remove that file, or pass on_error='skip'") from e
                log.warning("skipping unreadable image", extra={"path": str(self.records[i].path)})
                return i, None

        log.info("preprocessing images into cache", extra={"images": n, "resolution": res, "cache": str(path)})
        try:
            with ThreadPoolExecutor(max(1, workers)) as pool:
                results = pool.map(work, range(n))
                if progress:
                    from tqdm import tqdm

                    results = tqdm(results, total=n, desc=f"preprocess {res}px", unit="img")
                for i, image in results:
                    if image is not None:
                        arr[len(kept)] = image
                        kept.append(i)
            arr.flush()
            if len(kept) < n:  # compact: copy the kept rows into a file of the right length
                small = np.lib.format.open_memmap(tmp.with_suffix(".small.npy"), mode="w+", dtype=np.uint8,
                                                  shape=(len(kept), res, res))
                small[:] = arr[: len(kept)]
                small.flush()
                del small
                os.replace(tmp.with_suffix(".small.npy"), tmp)
            del arr
            kept_tmp = kept_path.with_suffix(f".{os.getpid()}.tmp")
            kept_tmp.write_text(json.dumps(kept))
            os.replace(kept_tmp, kept_path)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_suffix(".small.npy").unlink(missing_ok=True)
        return [self.records[i] for i in kept]

    def _images(self) -> np.ndarray:
        if self._array is None:  # opened lazily: DataLoader workers each map the file themselves
            self._array = np.load(self.cache_path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    # ---- Dataset -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def image_uint8(self, i: int) -> np.ndarray:
        """Preprocessed image i as uint8 (R, R)."""
        if self.cache_path is None:
            return _load(self.records[i], self.resolution)
        return np.asarray(self._images()[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.from_numpy(self.image_uint8(i).astype(np.float32)).div_(127.5).sub_(1.0).unsqueeze(0)
        return img, torch.tensor(self.records[i].codes, dtype=torch.long)
