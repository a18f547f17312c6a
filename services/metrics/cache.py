"""Feature cache and mergeable float64 running statistics.

Layout under the cache root — a local folder or an fsspec URL (``s3://bucket/cache``), by default
``get_settings().resolved_metrics_cache_url`` (``SYNTHRAD_CACHE_URL``, else ``<cache_dir>/metrics``); on an
object store every metrics replica of a cluster shares it:

* ``features/<stamp key>/<content hash>.npz`` — ``features`` (float32, n×d); the set's float64 running
  statistics (:class:`RunningStats`: n, mean, scatter) are derived on load (a 2048×2048 float64 matrix would be
  33 MB per set, more than the features of ~4,000 images). The stamp key (:meth:`ExtractorStamp.key`) covers extractor name,
  weight tensors, preprocessing and dtype, so a change of any of them is a miss.
* ``sets/<content hash>.npz`` — extractor-independent per-set data: spatial features, class labels,
  per-class mean images (variety), a few sample thumbnails (report).
* ``references/<name>.npz`` — user-registered reference sets (``services.metrics.references``).

Content hashes come from the sources (file bytes for folders, manifest for stored batches, pixels for arrays).
Writes are atomic, so concurrent scorers never read half a file: locally a temp file + rename; on an object
store the entry is serialised in memory and stored in one request (one PUT, or a multipart upload that
appears only when complete), so readers see the old object or the new one. A missing, short or corrupt
entry is a miss.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import os
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


def npz_bytes(compressed: bool = False, **arrays: Any) -> bytes:
    """The bytes of an ``.npz`` holding ``arrays`` (written in memory: one request to an object store)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _is_url(location: str) -> bool:
    return "://" in location or "::" in location


_SCOPED_URL: contextvars.ContextVar[str | None] = contextvars.ContextVar("synthrad_cache_url", default=None)


@contextlib.contextmanager
def cache_url_scope(url: str | None):
    """Within the block, caches made without a root use ``url`` (a metrics replica's shared cache reaches every
    evaluation it runs, however deep the cache is made)."""
    token = _SCOPED_URL.set(url)
    try:
        yield
    finally:
        _SCOPED_URL.reset(token)


def default_cache_url() -> str:
    """The scoped URL (:func:`cache_url_scope`), else ``get_settings().resolved_metrics_cache_url``:
    ``SYNTHRAD_CACHE_URL`` (a folder or an fsspec URL), else ``<cache_dir>/metrics`` — the one cache root of the
    metrics core."""
    from services.common.config import get_settings

    return _SCOPED_URL.get() or get_settings().resolved_metrics_cache_url


def default_cache_root() -> Path | str:
    """The default cache root: a :class:`Path` for a local folder, the URL (``str``) for an object store."""
    url = default_cache_url()
    return url if _is_url(url) else Path(url)


class FeatureCache:
    """Cache of per-set features (per extractor stamp) and per-set image statistics, on disk or in an object store.

    ``root``: a folder or an fsspec URL (``s3://bucket/prefix``); default :func:`default_cache_url`. Attributes:
    ``url`` (the location as a string), ``local`` (a local filesystem), ``fs`` / ``fs_root`` (the fsspec
    filesystem and the root's path in it) and ``root`` — a :class:`Path` for local roots (as before), the URL
    (``str``) otherwise. :meth:`read_bytes`, :meth:`write_bytes`, :meth:`list_names`, :meth:`remove` and
    :meth:`version` address files by a path relative to the root (``"references/x.npz"``) on either kind.
    """

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        import fsspec

        location = os.fspath(root) if root is not None else default_cache_url()
        self.enabled = enabled
        self.fs, fs_root = fsspec.core.url_to_fs(location)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols or "local" in protocols
        self.fs_root = fs_root.rstrip("/") or fs_root
        if self.local:
            self.root: Path | str = Path(location) if not _is_url(location) else Path(fs_root)
            self.url = str(self.root)
        else:
            self.root = self.url = location.rstrip("/")
        self._warned = False

    def __repr__(self) -> str:
        return f"FeatureCache({self.url!r}, enabled={self.enabled})"

    # generic access by relative path ---------------------------------------------------------------
    def location(self, rel: str) -> str:
        """Where ``rel`` lives, for messages: a filesystem path or a URL."""
        return str(self.root / rel) if self.local else f"{self.url}/{rel}"

    def _fs_path(self, rel: str) -> str:
        return f"{self.fs_root}/{rel}"

    def read_bytes(self, rel: str) -> bytes | None:
        """The bytes stored at ``rel``, or None when there is none. Other read errors propagate."""
        if self.local:
            p = self.root / rel
            try:
                return p.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
        try:
            return self.fs.cat_file(self._fs_path(rel))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Store ``data`` at ``rel`` atomically (local: temp file + rename; object store: one upload)."""
        if self.local:
            from services.common.atomic import write_atomic

            write_atomic(self.root / rel, data)
        else:
            self.fs.pipe_file(self._fs_path(rel), data)

    def list_names(self, rel_dir: str, suffix: str = "") -> list[str]:
        """Names of the files directly in ``rel_dir`` ending in ``suffix`` (a fresh listing, never a cached one)."""
        if self.local:
            d = self.root / rel_dir
            return sorted(p.name for p in d.glob(f"*{suffix}") if p.is_file()) if d.is_dir() else []
        path = self._fs_path(rel_dir)
        self.fs.invalidate_cache(path)  # s3fs caches listings; another replica may have written since
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        names = (str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return sorted(n for n in names if n.endswith(suffix))

    def version(self, rel: str) -> tuple | None:
        """A token that changes when the file at ``rel`` is replaced (size + mtime / ETag), None when it is gone."""
        if self.local:
            try:
                st = os.stat(self.root / rel)
            except (FileNotFoundError, NotADirectoryError):
                return None
            return (st.st_size, st.st_mtime_ns, st.st_ino)
        path = self._fs_path(rel)
        self.fs.invalidate_cache(path)
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            return None
        tag = next((info[k] for k in ("ETag", "etag", "md5Hash", "LastModified", "mtime", "updated") if info.get(k)), None)
        return (info.get("size"), str(tag))

    def remove(self, rel: str) -> bool:
        """Delete the file at ``rel``; False when there was none."""
        if self.local:
            try:
                (self.root / rel).unlink()
                return True
            except FileNotFoundError:
                return False
        try:
            self.fs.rm_file(self._fs_path(rel))
        except FileNotFoundError:
            return False
        self.fs.invalidate_cache(self._fs_path(rel))
        return True

    def _entry(self, rel: str) -> Path | io.BytesIO | None:
        """What ``np.load`` reads for a cache entry: the local file (read in place, as before), or the object's
        bytes. None: a miss — no entry, or one that cannot be read at all (logged once per cache)."""
        if self.local:
            p = self.root / rel
            return p if p.is_file() else None
        try:
            data = self.read_bytes(rel)
            return None if data is None else io.BytesIO(data)
        except Exception as e:  # noqa: BLE001 - a cache that cannot be read is a miss, not a failed scoring run
            if not self._warned:
                self._warned = True
                from services.common.logging import get_logger

                get_logger("metrics.cache").warning("feature cache entry unreadable; treated as a miss",
                                                   extra={"cache": self.url, "error": f"{type(e).__name__}: {e}"[:300]})
            return None

    # features -------------------------------------------------------------------------------------
    def _frel(self, stamp_key: str, content_hash: str) -> str:
        return f"features/{stamp_key}/{content_hash}.npz"

    def get_features(self, stamp_key: str, content_hash: str) -> tuple[np.ndarray, RunningStats] | None:
        if not self.enabled:
            return None
        src = self._entry(self._frel(stamp_key, content_hash))
        if src is None:
            return None
        try:
            with np.load(src, allow_pickle=False) as z:
                feats = z["features"]
            stats = RunningStats.from_features(feats)  # float64; cheaper than storing a d×d matrix per set
        except Exception:  # noqa: BLE001 - a corrupt cache entry is a miss
            return None
        return feats, stats

    def put_features(self, stamp_key: str, content_hash: str, feats: np.ndarray) -> None:
        if not self.enabled:
            return
        self.write_bytes(self._frel(stamp_key, content_hash), npz_bytes(features=np.asarray(feats, np.float32)))

    # extractor-independent set data --------------------------------------------------------------
    def _srel(self, content_hash: str) -> str:
        return f"sets/{content_hash}.npz"

    def get_set(self, content_hash: str) -> dict[str, np.ndarray] | None:
        if not self.enabled:
            return None
        src = self._entry(self._srel(content_hash))
        if src is None:
            return None
        try:
            with np.load(src, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:  # noqa: BLE001
            return None

    def put_set(self, content_hash: str, data: dict[str, np.ndarray]) -> None:
        if not self.enabled:
            return
        self.write_bytes(self._srel(content_hash), npz_bytes(**data))
