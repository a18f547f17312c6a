"""Feature cache and mergeable float64 running statistics.

Layout under ``<cache_dir>/metrics`` (``get_settings().resolved_cache_dir`` by default):

* ``features/<stamp key>/<content hash>.npz`` — ``features`` (float32, n×d); the set's float64 running
  statistics (:class:`RunningStats`: n, mean, scatter) are derived on load (a 2048×2048 float64 matrix would be
  33 MB per set, more than the features of ~4,000 images). The stamp key (:meth:`ExtractorStamp.key`) covers extractor name,
  weight tensors, preprocessing and dtype, so a change of any of them is a miss.
* ``sets/<content hash>.npz`` — extractor-independent per-set data: spatial features, class labels,
  per-class mean images (variety), a few sample thumbnails (report).

Content hashes come from the sources (file bytes for folders, manifest for stored batches, pixels for arrays).
Writes are atomic (temp file + rename), so concurrent scorers never read half a file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RunningStats:
    """Mean and scatter matrix in float64, updated batch by batch and merged across sets (Chan et al.)."""

    n: int
    mean: np.ndarray
    m2: np.ndarray  # Σ (x − mean)(x − mean)ᵀ

    @classmethod
    def empty(cls, dims: int) -> "RunningStats":
        return cls(0, np.zeros(dims), np.zeros((dims, dims)))

    @classmethod
    def from_features(cls, x: np.ndarray) -> "RunningStats":
        x = np.asarray(x, np.float64)
        if len(x) == 0:
            return cls.empty(x.shape[1])
        mu = x.mean(0)
        xc = x - mu
        return cls(len(x), mu, xc.T @ xc)

    def merge(self, other: "RunningStats") -> "RunningStats":
        if other.n == 0:
            return RunningStats(self.n, self.mean.copy(), self.m2.copy())
        if self.n == 0:
            return RunningStats(other.n, other.mean.copy(), other.m2.copy())
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return RunningStats(n, mean, m2)

    def update(self, batch: np.ndarray) -> "RunningStats":
        merged = self.merge(RunningStats.from_features(batch))
        self.n, self.mean, self.m2 = merged.n, merged.mean, merged.m2
        return self

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError("covariance needs n ≥ 2")
        return self.m2 / (self.n - 1)


def _atomic_savez(path: Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_cache_root() -> Path:
    """``get_settings().resolved_cache_dir / "metrics"`` — the one cache root of the metrics core."""
    from services.common.config import get_settings

    return Path(get_settings().resolved_cache_dir) / "metrics"


class FeatureCache:
    """On-disk cache of per-set features (per extractor stamp) and per-set image statistics."""

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.enabled = enabled

    # features -------------------------------------------------------------------------------------
    def _fpath(self, stamp_key: str, content_hash: str) -> Path:
        return self.root / "features" / stamp_key / f"{content_hash}.npz"

    def get_features(self, stamp_key: str, content_hash: str) -> tuple[np.ndarray, RunningStats] | None:
        if not self.enabled:
            return None
        p = self._fpath(stamp_key, content_hash)
        if not p.is_file():
            return None
        try:
            with np.load(p) as z:
                feats = z["features"]
            stats = RunningStats.from_features(feats)  # float64; cheaper than storing a d×d matrix per set
        except Exception:  # noqa: BLE001 - a corrupt cache entry is a miss
            return None
        return feats, stats

    def put_features(self, stamp_key: str, content_hash: str, feats: np.ndarray) -> None:
        if not self.enabled:
            return
        _atomic_savez(self._fpath(stamp_key, content_hash), features=np.asarray(feats, np.float32))

    # extractor-independent set data --------------------------------------------------------------
    def _spath(self, content_hash: str) -> Path:
        return self.root / "sets" / f"{content_hash}.npz"

    def get_set(self, content_hash: str) -> dict[str, np.ndarray] | None:
        if not self.enabled:
            return None
        p = self._spath(content_hash)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:  # noqa: BLE001
            return None

    def put_set(self, content_hash: str, data: dict[str, np.ndarray]) -> None:
        if self.enabled:
            _atomic_savez(self._spath(content_hash), **data)
