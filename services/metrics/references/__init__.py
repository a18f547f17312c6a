"""Reference sets registered by name, and the reference artefacts shipped in this folder.

A reference is the real side of a comparison with everything precomputed: features per extractor (float32)
with their float64 statistics, spatial features, class labels, per-class mean images and a few sample
thumbnails, plus the extractor stamps. Scoring against a registered reference computes only the other set.

Shipped (built by ``python -m services.metrics.build_references --data ../shared/data``):
  * ``nih-cxr64-valid`` (alias ``nih-cxr64``, the default ``Settings.default_reference``): NIH ChestX-ray14 64 px valid split, 200 images.
  * ``nih-cxr64-train``: the train split, 600 images.

``register_reference(name, path_or_features)`` adds one: a folder of images (features computed through the
cache), a ``.npy`` feature file / array (features only), or a reference ``.npz``. User references persist under
``<cache>/metrics/references/<name>.npz`` so other processes (the CLI, the serving layer) find them.

This is a package (not a ``references.py`` module) so the ``.npz`` artefacts beside it ship as package data.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from services.metrics.cache import FeatureCache, RunningStats
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
    path: Path | None = None  # npz it lives in


_REGISTRY: dict[str, Reference] = {}
_LOCK = threading.Lock()


def _user_dir(cache: FeatureCache | None = None) -> Path:
    return (cache or FeatureCache()).root / "references"


def save_reference(ref: Reference, path: str | os.PathLike) -> Path:
    """Write a reference ``.npz`` (features float32, compressed; JSON metadata). Stats are derived at load."""
    d = ref.data
    arrays: dict[str, np.ndarray] = {}
    for ex, f in d.features.items():  # stats are recomputed in float64 at load (a 2048² matrix is 33 MB)
        arrays[f"features__{ex}"] = np.asarray(f, np.float32)
    if d.spatial is not None:
        arrays["spatial"] = d.spatial
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
        "format": "synthrad-reference-v1",
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
    arrays["meta"] = np.array(json.dumps(meta))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_reference_file(path: str | os.PathLike, name: str | None = None) -> Reference:
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise MetricsError(f"cannot read reference file {path}: {e}") from e
    with z:
        if "meta" not in z.files:
            raise MetricsError(f"{path} is not a synthrad reference file (no 'meta')")
        meta = json.loads(str(z["meta"]))
        d = SetData(
            description=meta.get("description", str(path)),
            kind=meta.get("kind", "reference"),
            n=int(meta["n"]),
            content_hash=meta.get("content_hash"),
            image_shape=tuple(meta["image_shape"]) if meta.get("image_shape") else None,
        )
        for k in z.files:
            if k.startswith("features__"):
                ex = k[len("features__") :]
                f = z[k]
                d.features[ex] = f
                d.stats[ex] = RunningStats.from_features(f)
        d.stamps = {k: ExtractorStamp.from_dict(v) for k, v in meta.get("stamps", {}).items()}
        if "spatial" in z.files:
            d.spatial = z["spatial"]
            d.labels = [str(x) for x in z["labels"]]
        if "mean_keys" in z.files:
            keys = [str(k) for k in z["mean_keys"]]
            d.means = {k: z[f"meanimg_{i}"] for i, k in enumerate(keys)}
            d.mean_counts = {k: int(c) for k, c in zip(keys, z["mean_counts"])}
        if "samples" in z.files:
            d.samples = z["samples"].astype(np.float32) / 255.0
    return Reference(name=name or meta.get("name", path.stem), data=d, source=meta.get("source"), path=path)


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
        ref.path = save_reference(ref, _user_dir(cache) / f"{name}.npz")
    with _LOCK:
        _REGISTRY[name] = ref
    return ref


def unregister_reference(name: str, cache: FeatureCache | None = None) -> None:
    with _LOCK:
        _REGISTRY.pop(name, None)
    p = _user_dir(cache) / f"{name}.npz"
    if p.is_file():
        p.unlink()


def get_reference(name: str, cache: FeatureCache | None = None) -> Reference:
    with _LOCK:
        ref = _REGISTRY.get(name)
    if ref is not None:
        return ref
    p = _user_dir(cache) / f"{name}.npz" if _NAME_RE.match(name) else None
    if p is not None and p.is_file():
        ref = load_reference_file(p, name)
    elif name in BUILTIN and BUILTIN[name].is_file():
        ref = load_reference_file(BUILTIN[name], name)
    else:
        raise MetricsError(f"no registered reference named {name!r}; known: {', '.join(list_references(cache)) or 'none'}")
    with _LOCK:
        _REGISTRY.setdefault(name, ref)
    return ref


def is_reference(name: str, cache: FeatureCache | None = None) -> bool:
    return name in list_references(cache)


def list_references(cache: FeatureCache | None = None) -> list[str]:
    names = set(_REGISTRY) | {k for k, v in BUILTIN.items() if v.is_file()}
    d = _user_dir(cache)
    if d.is_dir():
        names |= {p.stem for p in d.glob("*.npz") if not p.name.endswith(".tmp.npz")}
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
