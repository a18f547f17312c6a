"""WebDataset-style tar shards: each sample is ``{key}.png`` (with provenance chunks) + ``{key}.json``.

Shards are written as ``pattern % index`` (e.g. ``out/shard-%06d.tar``), each finished shard renamed into
place atomically; readers (``webdataset.WebDataset``, ``iter_shard``) see complete shards only.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ..provenance import Provenance
from .errors import CorruptImageError
from .png import decode_png, encode_png

_KEY = re.compile(r"^[A-Za-z0-9_\-/]+$")


class ShardWriter:
    """Write samples into tar shards of at most ``max_count`` samples (and ``max_bytes`` when given)."""

    def __init__(self, path_pattern: str | Path, max_count: int = 10_000, max_bytes: int | None = None,
                 bit_depth: int = 8):
        pattern = str(path_pattern)
        if "%" not in pattern:
            raise ValueError(f"shard pattern {pattern!r} needs a %-index, e.g. 'out/shard-%06d.tar'")
        if max_count < 1:
            raise ValueError("max_count must be at least 1")
        self.pattern, self.max_count, self.max_bytes, self.bit_depth = pattern, max_count, max_bytes, bit_depth
        self.shards: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._count = self._bytes = 0
        self._keys: set[str] = set()

    def write(self, key: str, image: np.ndarray, meta: dict | None = None, provenance: Provenance | None = None) -> None:
        """Add one sample; ``meta`` (JSON-serialisable) and the provenance go to ``{key}.json``."""
        if not _KEY.match(key):
            raise ValueError(f"sample key {key!r} may hold only letters, digits, '_', '-', '/' (no dots)")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        png = encode_png(image, provenance, bit_depth=self.bit_depth)
        blob = sample_json(provenance, meta)
        if self._tar is None or self._count >= self.max_count or (
            self.max_bytes and self._count and self._bytes + len(png) + len(blob) > self.max_bytes
        ):
            self._next_shard()
        add_sample(self._tar, key, png, blob)
        self._keys.add(key)
        self._count += 1
        self._bytes += len(png) + len(blob)

    def _next_shard(self) -> None:
        self._finish()
        path = Path(self.pattern % len(self.shards))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tar = tarfile.open(str(path) + ".tmp", "w")
        self.shards.append(path)
        self._count = self._bytes = 0

    def _finish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(str(self.shards[-1]) + ".tmp", self.shards[-1])
            self._tar = None

    def close(self) -> list[Path]:
        """Finish the current shard; returns all shard paths written."""
        self._finish()
        return list(self.shards)

    def abort(self) -> None:
        """Drop the shard being written (finished shards stay)."""
        if self._tar is not None:
            self._tar.close()
            Path(str(self.shards.pop()) + ".tmp").unlink(missing_ok=True)
            self._tar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type else self.close()


def sample_json(provenance: Provenance | None, meta: dict | None = None) -> bytes:
    """The ``{key}.json`` member: user metadata plus the provenance under ``"provenance"``."""
    doc = dict(meta or {})
    if provenance is not None:
        doc["provenance"] = json.loads(provenance.to_json())
    return json.dumps(doc, sort_keys=True).encode()


def add_sample(tar: tarfile.TarFile, key: str, png: bytes, blob: bytes, mtime: int | None = None) -> None:
    """Append one sample (``{key}.png`` + ``{key}.json``) to an open tar."""
    for name, payload in ((f"{key}.png", png), (f"{key}.json", blob)):
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(payload), 0o644
        info.mtime = int(time.time()) if mtime is None else mtime
        tar.addfile(info, io.BytesIO(payload))


def iter_shard(path: str | Path) -> Iterator[tuple[str, np.ndarray, dict]]:
    """Yield ``(key, float32 HxW image in [0, 1], json metadata)`` for each sample in one shard."""
    path = Path(path)
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise CorruptImageError(f"{path}: not a readable tar shard ({e})") from e
    with tar:
        pending: dict[str, dict] = {}
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            pending.setdefault(key, {})[ext] = tar.extractfile(member).read()
            sample = pending[key]
            if "png" in sample and "json" in sample:
                del pending[key]
                img, _ = decode_png(sample["png"], f"{path}:{key}.png")
                try:
                    meta = json.loads(sample["json"])
                except ValueError as e:
                    raise CorruptImageError(f"{path}:{key}.json: invalid JSON ({e})") from e
                yield key, img, meta
        if pending:
            raise CorruptImageError(f"{path}: incomplete samples (need .png and .json): {', '.join(sorted(pending))[:200]}")
