"""One pass over an image set computing everything the requested measures need, through the cache.

``load_set(source, extractors, spatial=…, variety=…)`` returns a :class:`SetData`. Components already in the
cache (per content hash; features also per extractor stamp) are not recomputed; the images are read at most
once, and only when something is missing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from services.metrics.cache import FeatureCache, RunningStats
from services.metrics.errors import MetricsError
from services.metrics.extractors.base import ExtractorStamp, FeatureExtractor, as_float_image
from services.metrics.measures.spatial import SPATIAL_FEATURES, spatial_features
from services.metrics.measures.variety import MeanImages
from services.metrics.sources import ImageSource

N_SAMPLES = 16
Progress = Callable[[str, int, int | None], None]  # (stage, n_done_increment, total)


@dataclass
class SetData:
    description: str
    kind: str
    n: int
    content_hash: str | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)  # extractor name → (n, d) float32
    stats: dict[str, RunningStats] = field(default_factory=dict)
    stamps: dict[str, ExtractorStamp] = field(default_factory=dict)
    spatial: np.ndarray | None = None  # (n, len(SPATIAL_FEATURES))
    labels: list[str] | None = None
    means: dict[str, np.ndarray] | None = None
    mean_counts: dict[str, int] | None = None
    samples: np.ndarray | None = None  # (k, h, w) or (k, h, w, 3) float32 [0, 1]
    image_shape: tuple[int, ...] | None = None  # most common (H, W)
    extractor_calls: int = 0  # images pushed through extractors in this load (0 = all from cache)

    def summary(self) -> dict:
        return {
            "description": self.description,
            "kind": self.kind,
            "n": self.n,
            "content_hash": self.content_hash,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "extractors": sorted(self.features),
            "classes": dict(Counter(self.labels)) if self.labels else None,
        }


def _set_blob(spatial: np.ndarray, labels: list[str], means: MeanImages, samples: list[np.ndarray], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    blob: dict[str, np.ndarray] = {
        "spatial": spatial,
        "spatial_names": np.array(SPATIAL_FEATURES),
        "labels": np.array(labels, dtype=str),
        "image_shape": np.array(shape, dtype=np.int64),
        "mean_keys": np.array(sorted(means.sums), dtype=str),
        "mean_counts": np.array([means.counts[k] for k in sorted(means.sums)], dtype=np.int64),
    }
    for i, k in enumerate(sorted(means.sums)):
        blob[f"mean_{i}"] = (means.sums[k] / means.counts[k]).astype(np.float32)
    if samples:
        same = [s for s in samples if s.shape == samples[0].shape]
        blob["samples"] = np.stack(same).astype(np.float32)
    return blob


def _apply_blob(sd: SetData, blob: dict[str, np.ndarray]) -> None:
    sd.spatial = blob["spatial"]
    sd.labels = [str(x) for x in blob["labels"]]
    keys = [str(k) for k in blob["mean_keys"]]
    sd.means = {k: blob[f"mean_{i}"] for i, k in enumerate(keys)}
    sd.mean_counts = {k: int(c) for k, c in zip(keys, blob["mean_counts"])}
    sd.samples = blob.get("samples")
    sd.image_shape = tuple(int(v) for v in blob["image_shape"])


PREREAD_BYTES = 256 * 2**20  # decoded images kept from the checking pass (beyond this they are decoded again)


def _checked(img: np.ndarray, name: str, source: ImageSource) -> np.ndarray:
    try:
        img = as_float_image(img)
    except ValueError as e:
        raise MetricsError(f"image {name} in {source.description}: {e}") from e
    if not np.isfinite(img).all():
        raise MetricsError(f"image {name} in {source.description} contains NaN/inf")
    return img


def needs_read(source: ImageSource, extractors: Sequence[FeatureExtractor] = (), spatial: bool = False,
               variety: bool = False, cache: FeatureCache | None = None) -> bool:
    """Whether :func:`load_set` would have to read ``source`` (something is missing from the cache)."""
    cache = cache or FeatureCache(enabled=False)
    n = len(source)
    if n == 0:
        return False
    chash = source.content_hash()
    for ex in extractors:
        hit = cache.get_features(ex.stamp.key(), chash)
        if hit is None or len(hit[0]) != n:
            return True
    if spatial or variety:
        blob = cache.get_set(chash)
        return blob is None or len(blob["labels"]) != n
    return False


def preread(source: ImageSource, progress: Progress | None = None, label: str = "set") -> list | None:
    """Decode and check every image now (see ``_preread``); pass the result to ``load_set(items=…)``."""
    n = len(source)
    if n == 0:
        raise MetricsError(f"no images found in {source.description}")
    return _preread(source, n, progress, label)


def _preread(source: ImageSource, n: int, progress: Progress | None, label: str) -> list | None:
    """Decode and check every image of ``source`` (fails on the first unreadable one, naming it).

    Returns the decoded ``(name, image, label)`` items while they fit in ``PREREAD_BYTES`` (the main pass then
    reuses them), else ``None`` (the main pass decodes again; decoding is cheap next to feature extraction)."""
    kept: list | None = []
    size = 0
    count = 0
    stage = f"{label}: reading"
    for name, img, lab in source:
        img = _checked(img, name, source)
        count += 1
        if kept is not None:
            size += img.nbytes
            if size <= PREREAD_BYTES:
                kept.append((name, img, lab))
            else:
                kept = None
        if progress is not None:
            progress(stage, 1, n)
    if count != n:
        raise MetricsError(f"{source.description}: expected {n} images, read {count}")
    return kept


def load_set(
    source: ImageSource,
    extractors: Sequence[FeatureExtractor] = (),
    spatial: bool = False,
    variety: bool = False,
    cache: FeatureCache | None = None,
    progress: Progress | None = None,
    batch_size: int | None = None,
    label: str = "set",
    items: list | None = None,
    checked: bool = False,
) -> SetData:
    """``items``: the decoded images from :func:`preread`; ``checked``: :func:`preread` already ran (its result
    may be ``None`` for sets too large to keep) — either skips this function's own checking pass."""
    n = len(source)
    if n == 0:
        raise MetricsError(f"no images found in {source.description}")
    cache = cache or FeatureCache(enabled=False)
    chash = source.content_hash()
    sd = SetData(description=source.description, kind=source.kind, n=n, content_hash=chash)
    todo: list[FeatureExtractor] = []
    for ex in extractors:
        hit = cache.get_features(ex.stamp.key(), chash)
        if hit is not None and len(hit[0]) == n:
            sd.features[ex.name], sd.stats[ex.name] = hit
            sd.stamps[ex.name] = ex.stamp
        else:
            todo.append(ex)
    need_blob = spatial or variety
    blob = cache.get_set(chash) if need_blob else None
    if blob is not None and len(blob["labels"]) == n:
        _apply_blob(sd, blob)
        need_blob = False
    if not todo and not need_blob:
        return sd

    # decode and check every image before any extractor starts: a corrupt file fails at once, named -----------
    if items is not None and len(items) != n:
        items, checked = None, False
    if items is None and not checked:
        items = _preread(source, n, progress, label)

    # one streaming pass ---------------------------------------------------------------------------------
    bs = {ex.name: batch_size or ex.default_batch_size for ex in todo}
    pending: dict[str, list[np.ndarray]] = {ex.name: [] for ex in todo}
    feats: dict[str, list[np.ndarray]] = {ex.name: [] for ex in todo}
    spat_rows: list[np.ndarray] = []
    labels: list[str] = []
    means = MeanImages()
    samples: list[np.ndarray] = []
    shapes: Counter = Counter()
    stage = f"{label}: " + ", ".join([ex.name for ex in todo] + (["spatial"] if need_blob else []))

    def flush(ex: FeatureExtractor) -> None:
        if pending[ex.name]:
            feats[ex.name].append(np.asarray(ex.extract_batch(pending[ex.name]), np.float32))
            sd.extractor_calls += len(pending[ex.name])
            pending[ex.name] = []

    count = 0
    for name, img, lab in (items if items is not None else source):
        if items is None:
            img = _checked(img, name, source)
        for ex in todo:
            pending[ex.name].append(img)
            if len(pending[ex.name]) >= bs[ex.name]:
                flush(ex)
        if need_blob:
            spat_rows.append(spatial_features([img])[0])
            means.add(img, lab)
            labels.append(lab)
            shapes[img.shape[:2]] += 1
            if len(samples) < N_SAMPLES:
                samples.append(img)
        count += 1
        if progress is not None:
            progress(stage, 1, n)
    for ex in todo:
        flush(ex)
    if count != n:
        raise MetricsError(f"{source.description}: expected {n} images, read {count}")
    for ex in todo:
        f = np.concatenate(feats[ex.name]) if feats[ex.name] else np.zeros((0, ex.dims), np.float32)
        st = RunningStats.from_features(f)
        sd.features[ex.name], sd.stats[ex.name], sd.stamps[ex.name] = f, st, ex.stamp
        cache.put_features(ex.stamp.key(), chash, f)
    if need_blob:
        shape = shapes.most_common(1)[0][0]
        blob = _set_blob(np.stack(spat_rows), labels, means, samples, shape)
        cache.put_set(chash, blob)
        _apply_blob(sd, blob)
    return sd


def features_set(feats: np.ndarray, description: str, extractor: str, stamp: ExtractorStamp | None = None) -> SetData:
    """A SetData that only holds user-supplied features (e.g. from a .npy file)."""
    f = np.asarray(feats, np.float32)
    st = stamp or ExtractorStamp(
        name=extractor,
        arch="user-supplied features (.npy); assumed to come from this extractor",
        dims=int(f.shape[1]),
        weights_sha256=None,
        weights_source=description,
        preprocessing={},
        dtype=str(f.dtype),
    )
    return SetData(
        description=description,
        kind="features",
        n=len(f),
        features={extractor: f},
        stats={extractor: RunningStats.from_features(f)},
        stamps={extractor: st},
    )
