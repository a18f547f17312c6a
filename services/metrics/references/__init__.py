"""Reference sets registered by name, and the reference artefacts shipped in this folder.

A reference is the real side of a comparison with everything precomputed: features per extractor (float32)
with their float64 statistics, spatial features, class labels, per-class mean images and a few sample
thumbnails, plus the extractor stamps. Scoring against a registered reference computes only the other set.

Shipped (built by ``python -m services.metrics.build_references --data ../shared/data``):
  * ``nih-cxr64-valid`` (alias ``nih-cxr64``, the default ``Settings.default_reference``): NIH ChestX-ray14 64 px valid split, 200 images.
  * ``nih-cxr64-train``: the train split, 600 images.

``register_reference(name, path_or_features)`` adds one: a folder of images (features computed through the
cache), a ``.npy`` feature file / array (features only), or a reference ``.npz``. User references persist under
``<cache root>/references/<name>.npz`` (the :class:`FeatureCache` root: a folder or an object-store URL such as
``s3://bucket/cache``, ``Settings.resolved_metrics_cache_url`` by default) so other processes (the CLI, the
serving layer, every metrics replica of a cluster) find them. Each is written whole (temp file + rename
locally, one upload to an object store) and carries a sha256 of its content in its metadata, checked on load:
a damaged reference is a :class:`ReferenceDamaged` naming it. A process that holds a persisted reference in
memory notices when another one replaces or removes the stored object (one ``stat``/``HEAD`` per lookup).

This is a package (not a ``references.py`` module) so the ``.npz`` artefacts beside it ship as package data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from services.metrics.cache import FeatureCache, RunningStats, npz_bytes
from services.metrics.errors import MetricsError
from services.metrics.extractors.base import ExtractorStamp
from services.metrics.sets import SetData

HERE = Path(__file__).parent
BUILTIN: dict[str, Path] = {
    "nih-cxr64": HERE / "nih-cxr64-valid.npz",
    "nih-cxr64-valid": HERE / "nih-cxr64-valid.npz",
    "nih-cxr64-train": HERE / "nih-cxr64-train.npz",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class Reference:
    name: str
    data: SetData
    source: str | None = None  # folder it was built from (to add extractors later), if known
    path: Path | str | None = None  # npz it lives in: a local Path, or a URL (object store)
    stored_in: str | None = field(default=None, repr=False, compare=False)  # cache url of a persisted user reference
    version: tuple | None = field(default=None, repr=False, compare=False)  # the stored object's version when read


class ReferenceDamaged(MetricsError):
    """A stored reference that cannot be used: unreadable, truncated, or its content no longer matches the
    sha256 recorded when it was saved. Not transient: register it again (or remove it)."""

    def __init__(self, name: str, where: str, reason: str):
        self.name, self.where, self.reason = name, where, reason
        super().__init__(f"reference {name!r} is damaged ({reason}); register it again or remove it [{where}]")


_REGISTRY: dict[str, Reference] = {}
_LOCK = threading.Lock()
_FORMAT = "synthrad-reference-v1"


def _rel(name: str) -> str:
    return f"references/{name}.npz"


def _is_url(path: str | os.PathLike) -> bool:
    s = os.fspath(path)
    return "://" in s or "::" in s


def _content_sha256(arrays: dict[str, np.ndarray], meta: dict) -> str:
    """sha256 over every array (name, dtype, shape, bytes; in name order) and the metadata (without itself)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    return h.hexdigest()


def reference_bytes(ref: Reference) -> bytes:
    """A reference ``.npz`` in memory (features float32, compressed; JSON metadata with a content sha256)."""
    d = ref.data
    arrays: dict[str, np.ndarray] = {}
    for ex, f in d.features.items():  # stats are recomputed in float64 at load (a 2048² matrix is 33 MB)
        arrays[f"features__{ex}"] = np.asarray(f, np.float32)
    if d.spatial is not None:
        arrays["spatial"] = np.asarray(d.spatial)
        arrays["labels"] = np.array(d.labels or [], dtype=str)
    if d.means:
        keys = sorted(d.means)
        arrays["mean_keys"] = np.array(keys, dtype=str)
        arrays["mean_counts"] = np.array([(d.mean_counts or {}).get(k, 0) for k in keys], np.int64)
        for i, k in enumerate(keys):
            arrays[f"meanimg_{i}"] = np.asarray(d.means[k], np.float32)
    if d.samples is not None:
        arrays["samples"] = np.clip(np.rint(np.asarray(d.samples) * 255), 0, 255).astype(np.uint8)
    meta = {
        "format": _FORMAT,
        "name": ref.name,
        "description": d.description,
        "kind": d.kind,
        "n": d.n,
        "content_hash": d.content_hash,
        "image_shape": list(d.image_shape) if d.image_shape else None,
        "stamps": {k: v.to_dict() for k, v in d.stamps.items()},
        "source": ref.source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta["sha256"] = _content_sha256(arrays, meta)
    return npz_bytes(compressed=True, meta=np.array(json.dumps(meta)), **arrays)


def save_reference(ref: Reference, path: str | os.PathLike) -> Path | str:
    """Write a reference ``.npz`` to a local path (atomically: temp file + rename) or an fsspec URL (one upload).
    Stats are derived at load. Returns the local :class:`Path`, or the URL."""
    data = reference_bytes(ref)
    if _is_url(path):
        import fsspec

        fs, fs_path = fsspec.core.url_to_fs(os.fspath(path))
        fs.pipe_file(fs_path, data)
        return os.fspath(path)
    from services.common.atomic import write_atomic

    return write_atomic(Path(path), data)


def _read_reference(src: Any, where: str, name: str | None, damaged) -> Reference:
    """Decode a reference ``.npz`` (a local path or a file-like); ``damaged(reason)`` builds the error to raise."""
    try:
        z = np.load(src, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise damaged(f"{type(e).__name__}: {e}") from e
    try:
        with z:
            if "meta" not in z.files:
                raise damaged("not a synthrad reference file (no 'meta')")
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}  # reads (and CRC-checks) every member
    except MetricsError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated member, a bad CRC, unparsable metadata
        raise damaged(f"{type(e).__name__}: {e}") from e
    if not isinstance(meta, dict):
        raise damaged("its metadata is not an object")
    expected = meta.get("sha256")
    if expected is not None and _content_sha256(arrays, meta) != expected:
        raise damaged("sha256 mismatch: its content changed after it was saved")
    try:
        d = SetData(
            description=meta.get("description", where),
            kind=meta.get("kind", "reference"),
            n=int(meta["n"]),
            content_hash=meta.get("content_hash"),
            image_shape=tuple(meta["image_shape"]) if meta.get("image_shape") else None,
        )
        for k, f in arrays.items():
            if k.startswith("features__"):
                ex = k[len("features__") :]
                d.features[ex] = f
                d.stats[ex] = RunningStats.from_features(f)
        d.stamps = {k: ExtractorStamp.from_dict(v) for k, v in meta.get("stamps", {}).items()}
        if "spatial" in arrays:
            d.spatial = arrays["spatial"]
            d.labels = [str(x) for x in arrays["labels"]]
        if "mean_keys" in arrays:
            keys = [str(k) for k in arrays["mean_keys"]]
            d.means = {k: arrays[f"meanimg_{i}"] for i, k in enumerate(keys)}
            d.mean_counts = {k: int(c) for k, c in zip(keys, arrays["mean_counts"])}
        if "samples" in arrays:
            d.samples = arrays["samples"].astype(np.float32) / 255.0
    except Exception as e:  # noqa: BLE001 - consistent bytes, inconsistent content (an old or foreign file)
        raise damaged(f"inconsistent content ({type(e).__name__}: {e})") from e
    stem = where.rstrip("/").rsplit("/", 1)[-1].removesuffix(".npz")
    return Reference(name=name or meta.get("name", stem), data=d, source=meta.get("source"))


def load_reference_file(path: str | os.PathLike, name: str | None = None) -> Reference:
    """Load a reference ``.npz`` from a local path or an fsspec URL (its sha256 checked when it has one)."""
    where = os.fspath(path)

    def damaged(reason: str) -> MetricsError:
        return MetricsError(f"cannot read reference file {where}: {reason}")

    if _is_url(path):
        import fsspec

        fs, fs_path = fsspec.core.url_to_fs(where)
        try:
            raw = fs.cat_file(fs_path)
        except FileNotFoundError:
            raise MetricsError(f"reference file {where} not found") from None
        ref = _read_reference(io.BytesIO(raw), where, name, damaged)
        ref.path = where
        return ref
    ref = _read_reference(Path(path), where, name, damaged)
    ref.path = Path(path)
    return ref


def _load_stored(name: str, cache: FeatureCache) -> Reference | None:
    """The user reference ``name`` persisted in ``cache`` (None: there is none); :class:`ReferenceDamaged`."""
    rel = _rel(name)
    version = cache.version(rel)  # before the read: a replacement in between is noticed on the next lookup
    if version is None:
        return None
    where = cache.location(rel)

    def damaged(reason: str) -> MetricsError:
        return ReferenceDamaged(name, where, reason)

    if cache.local:
        src: Any = cache.root / rel
        if not src.is_file():
            return None
    else:
        raw = cache.read_bytes(rel)
        if raw is None:
            return None
        src = io.BytesIO(raw)
    ref = _read_reference(src, where, name, damaged)
    ref.path = cache.root / rel if cache.local else where
    ref.stored_in, ref.version = cache.url, version
    return ref


def register_reference(
    name: str,
    path_or_features: str | os.PathLike | np.ndarray,
    extractors: Sequence[str] = ("inception",),
    extractor_options: dict | None = None,
    persist: bool = True,
    cache: FeatureCache | None = None,
    progress=None,
) -> Reference:
    """Register ``name`` → a reference built from a folder, a ``.npy``/array of features, or a reference ``.npz``.

    For a folder, features are computed (through the feature cache) for each extractor in ``extractors``,
    with spatial features, labels and mean images. For features, ``extractors[0]`` names the extractor they
    came from. ``persist`` writes the reference under the cache so other processes can use it by name.
    """
    if not _NAME_RE.match(name):
        raise MetricsError(f"invalid reference name {name!r} (letters, digits, '.', '_', '-'; ≤ 64 chars)")
    from services.metrics.sets import features_set, load_set
    from services.metrics.sources import FolderSource, load_feature_file

    cache = cache or FeatureCache()
    source: str | None = None
    if isinstance(path_or_features, np.ndarray):
        data = features_set(path_or_features, f"features array ({len(path_or_features)})", extractors[0])
    else:
        p = Path(path_or_features)
        if p.is_dir():
            from services.metrics.extractors import get_extractor

            exs = [get_extractor(e, **(extractor_options or {}).get(e, {})) for e in extractors]
            data = load_set(FolderSource(p), exs, spatial=True, variety=True, cache=cache, progress=progress, label=name)
            source = str(p.resolve())
        elif p.suffix.lower() == ".npy":
            data = features_set(load_feature_file(p), f"features file {p}", extractors[0])
        elif p.suffix.lower() == ".npz":
            data = load_reference_file(p, name).data
        else:
            raise MetricsError(f"cannot register {path_or_features!r}: not a folder, .npy features or reference .npz")
    ref = Reference(name=name, data=data, source=source)
    if persist:
        rel = _rel(name)
        cache.write_bytes(rel, reference_bytes(ref))
        ref.path = cache.root / rel if cache.local else cache.location(rel)
        ref.stored_in, ref.version = cache.url, cache.version(rel)
    with _LOCK:
        _REGISTRY[name] = ref
    return ref


def unregister_reference(name: str, cache: FeatureCache | None = None) -> None:
    with _LOCK:
        _REGISTRY.pop(name, None)
    if _NAME_RE.match(name):
        (cache or FeatureCache()).remove(_rel(name))


def _forget(name: str, ref: Reference) -> None:
    with _LOCK:
        if _REGISTRY.get(name) is ref:
            del _REGISTRY[name]


def get_reference(name: str, cache: FeatureCache | None = None) -> Reference:
    """The reference ``name``: registered in this process, persisted in the cache (this or another process),
    or shipped. A persisted one held in memory is re-read when the stored object was replaced, and dropped
    when it was removed (by another process sharing the cache)."""
    cache = cache or FeatureCache()
    with _LOCK:
        ref = _REGISTRY.get(name)
    if ref is not None:
        if ref.stored_in is None or ref.stored_in != cache.url:
            return ref  # registered in this process only (or persisted elsewhere): as registered
        if cache.version(_rel(name)) == ref.version:
            return ref
        _forget(name, ref)  # replaced or removed since it was read
    stored = _load_stored(name, cache) if _NAME_RE.match(name) else None
    if stored is not None:
        ref = stored
    elif name in BUILTIN and BUILTIN[name].is_file():
        ref = load_reference_file(BUILTIN[name], name)
    else:
        raise MetricsError(f"no registered reference named {name!r}; known: {', '.join(list_references(cache)) or 'none'}")
    with _LOCK:
        _REGISTRY.setdefault(name, ref)
        return _REGISTRY[name]


def is_reference(name: str, cache: FeatureCache | None = None) -> bool:
    return name in list_references(cache)


def list_references(cache: FeatureCache | None = None) -> list[str]:
    """Names usable as references: shipped, registered in this process, and persisted in the cache (a fresh
    listing: references another process registered or removed count)."""
    cache = cache or FeatureCache()
    stored = {n[: -len(".npz")] for n in cache.list_names("references", ".npz") if not n.endswith(".tmp.npz")}
    stored = {n for n in stored if _NAME_RE.match(n)}
    with _LOCK:
        for n, r in list(_REGISTRY.items()):
            if r.stored_in is not None and r.stored_in == cache.url and n not in stored:
                del _REGISTRY[n]  # removed from the shared cache by another process
        names = set(_REGISTRY)
    names |= {k for k, v in BUILTIN.items() if v.is_file()} | stored
    return sorted(names)


def ensure_extractor(ref: Reference, extractor, cache: FeatureCache | None = None, progress=None) -> None:
    """Make sure ``ref`` has features of ``extractor`` (computing them from its source folder if needed)."""
    have = ref.data.features.get(extractor.name)
    stamp = ref.data.stamps.get(extractor.name)
    if have is not None and (stamp is None or stamp.weights_sha256 is None or stamp.compatible(extractor.stamp)):
        return  # same network/weights/preprocessing (a dtype difference is reported by score())
    if have is not None and stamp is not None and stamp.key() != extractor.stamp.key():
        why = f"its {extractor.name} features were made with a different stamp ({stamp.key()} vs {extractor.stamp.key()})"
    else:
        why = f"it has no {extractor.name} features (has: {', '.join(sorted(ref.data.features)) or 'none'})"
    if ref.source and Path(ref.source).is_dir():
        from services.metrics.sets import load_set
        from services.metrics.sources import FolderSource

        sd = load_set(FolderSource(ref.source), [extractor], cache=cache or FeatureCache(), progress=progress, label=ref.name)
        ref.data.features[extractor.name] = sd.features[extractor.name]
        ref.data.stats[extractor.name] = sd.stats[extractor.name]
        ref.data.stamps[extractor.name] = extractor.stamp
        ref.data.extractor_calls += sd.extractor_calls
        return
    raise MetricsError(f"reference {ref.name!r} cannot be used with extractor {extractor.name!r}: {why}")
