"""Training-set indexes: the features of a generator's training set (no images), for memorisation checks.

An index is one JSON file ``<name>.json`` (what it was built from, the training and held-out file names as
ids relative to the dataset folder — never paths —, the extractor stamps, and the sha256 of each data file)
beside one or two ``.npz`` files per feature space, all in one folder:

* ``<name>.<space>.npz`` — ``train`` (n, d) float16 features, ``train_nn`` (each training point's distance to
  its nearest *other* training point: the authenticity radius), the held-out split's distances to the training
  set (``heldout_nn``, ``heldout_nn_index``: the calibration of the near-copy threshold), the C_T cells
  (``centres`` of a k-means partition of the training features, ``train_cells``, ``heldout_cells``,
  ``heldout_cell_nn``: each held-out point's distance to the nearest training point of its own cell);
* ``<name>.<space>.heldout.npz`` — ``heldout`` (m, d) float16 features (a C_T with another number of cells
  re-partitions with them); a separate file keeps every file ≤ 20 MB.

Distances are Euclidean in each space and computed from the stored (float16-rounded) features, so a synthetic
image's distance is comparable with the held-out ones. Spaces:

* ``pixel`` — the image resized to 64×64, flattened (4096 values in [0, 1]) and projected to 256 dimensions by
  a fixed Gaussian random matrix (entries N(0, 1/256), from a seeded PCG64 stream through Box–Muller, so it is
  the same on every machine; its fingerprint is checked at load). By the Johnson–Lindenstrauss lemma distances
  are preserved *approximately*: each projected distance is the pixel distance times a factor with mean ≈ 1 and
  a relative spread of about 1/√(2·256) ≈ 4.4 % (so near-identical images stay near, far ones far);
* ``inception`` — FID Inception-V3 pool3 (2048-d), ``cxr-encoder`` — the chest-X-ray encoder (128-d); the
  index records each extractor's stamp and refuses features from another network or preprocessing.

Indexes are found in the shipped folder (this package) and in ``$SYNTHRAD_HOME/indexes``
(:func:`index_dirs`); :func:`index_for_model` maps a model to the index of its training set through the
``training`` block of its descriptor (or an explicit ``training_index`` there). Build one with
``python -m services.metrics.evaluation.indexes.build`` (needs the dataset; the product never does).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from services.metrics.errors import MetricsError

FORMAT = "synthrad-training-index/1"
SPACES = ("pixel", "inception", "cxr-encoder")
SHIPPED_DIR = Path(__file__).resolve().parent
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_FILE_BYTES = 20 * 2**20

PIXEL_SIZE = 64
PIXEL_DIMS = 256
PIXEL_SEED = 20261201  # the projection's PCG64 seed (changing it changes every pixel-space index)


# ---- the pixel space: a fixed Johnson–Lindenstrauss projection ---------------------------------------------
@lru_cache(maxsize=4)
def jl_projection(in_dims: int = PIXEL_SIZE * PIXEL_SIZE, out_dims: int = PIXEL_DIMS,
                  seed: int = PIXEL_SEED) -> np.ndarray:
    """``(in_dims, out_dims)`` float32, entries N(0, 1/out_dims), so ``E‖xP − yP‖² = ‖x − y‖²``.

    Built from the raw 64-bit output of PCG64 (a fixed algorithm, unlike numpy's distribution methods) through
    the Box–Muller transform: the same matrix with any numpy version."""
    n = in_dims * out_dims
    raw = np.random.PCG64(seed).random_raw(n + (n % 2))
    u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53  # uniform in (0, 1)
    u1, u2 = u[0::2], u[1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:n]
    m = (z / np.sqrt(out_dims)).reshape(in_dims, out_dims).astype(np.float32)
    m.setflags(write=False)
    return m


def projection_fingerprint(m: np.ndarray) -> list[float]:
    """A few numbers that identify the projection (checked when an index is loaded)."""
    return [round(float(v), 6) for v in (m[0, 0], m[-1, -1], m[123 % m.shape[0], 45 % m.shape[1]],
                                          float(np.square(m, dtype=np.float64).sum()))]


def pixel_stamp() -> dict[str, Any]:
    m = jl_projection()
    return {"name": "pixel", "arch": f"Gaussian random projection (Johnson-Lindenstrauss) of the {PIXEL_SIZE}x"
                                      f"{PIXEL_SIZE} image, {PIXEL_DIMS}-d",
            "dims": PIXEL_DIMS, "seed": PIXEL_SEED, "generator": "PCG64 random_raw + Box-Muller, N(0, 1/dims)",
            "preprocessing": {"resize": "bilinear, antialias when shrinking", "size": PIXEL_SIZE,
                              "input_range": [0.0, 1.0]},
            "fingerprint": projection_fingerprint(m)}


def pixel_features(images: np.ndarray) -> np.ndarray:
    """(n, h, w) float [0, 1] → (n, 256) float32 projected pixels."""
    from services.metrics.evaluation.inputs import resize

    x = resize(np.asarray(images, dtype=np.float32), PIXEL_SIZE).reshape(len(images), -1)
    return (x.astype(np.float32) @ jl_projection()).astype(np.float32)


def extractor_for(space: str):
    from services.metrics.extractors import get_extractor

    if space not in ("inception", "cxr-encoder"):
        raise MetricsError(f"unknown feature space {space!r}; choose from {', '.join(SPACES)}")
    return get_extractor(space)


def space_stamp(space: str) -> dict[str, Any]:
    """The stamp of the featurizer this process uses for ``space`` (an extractor's ``to_dict``)."""
    return pixel_stamp() if space == "pixel" else extractor_for(space).stamp.to_dict()


def featurize(space: str, images: np.ndarray, resolution: int | None = None,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Features ``(n, d)`` float32 of images ``(n, h, w)`` in [0, 1] in ``space``, the images first resized to
    ``resolution`` (an index's: the resolution its training images were read at)."""
    from services.metrics.evaluation.inputs import resize

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x.mean(-1)
    if resolution:
        x = resize(x, int(resolution))
    if space == "pixel":
        out = pixel_features(x)
        if progress is not None:
            progress(len(x))
        return out
    return extractor_for(space).extract(list(x), progress=progress)


def stamps_agree(space: str, stored: dict[str, Any], current: dict[str, Any]) -> bool:
    if space == "pixel":
        return stored.get("fingerprint") == current.get("fingerprint") and stored.get("dims") == current.get("dims")
    keys = ("name", "arch", "weights_sha256", "preprocessing")
    return all(stored.get(k) == current.get(k) for k in keys)


# ---- one feature space of an index --------------------------------------------------------------------------
@dataclass
class SpaceData:
    """The arrays of one space (float32 in memory; features stored float16)."""

    space: str
    train: np.ndarray  # (n, d)
    heldout: np.ndarray  # (m, d)
    train_nn: np.ndarray  # (n,) distance of each training point to its nearest other training point
    heldout_nn: np.ndarray  # (m,) distance of each held-out point to its nearest training point
    heldout_nn_index: np.ndarray  # (m,) which training point
    centres: np.ndarray  # (k, d) C_T cells (k-means of the training features)
    train_cells: np.ndarray  # (n,)
    heldout_cells: np.ndarray  # (m,)
    heldout_cell_nn: np.ndarray  # (m,) distance to the nearest training point of the same cell
    stamp: dict[str, Any] = field(default_factory=dict)

    @property
    def cells(self) -> int:
        return int(len(self.centres))

    def threshold(self, quantile: float) -> float:
        """The near-copy threshold: the ``quantile`` of the held-out images' distances to the training set."""
        return float(np.quantile(self.heldout_nn.astype(np.float64), quantile))

    def main_arrays(self) -> dict[str, np.ndarray]:
        return {"train": self.train.astype(np.float16), "train_nn": self.train_nn.astype(np.float32),
                "heldout_nn": self.heldout_nn.astype(np.float32),
                "heldout_nn_index": self.heldout_nn_index.astype(np.int32),
                "centres": self.centres.astype(np.float32), "train_cells": self.train_cells.astype(np.int32),
                "heldout_cells": self.heldout_cells.astype(np.int32),
                "heldout_cell_nn": self.heldout_cell_nn.astype(np.float32)}

    def heldout_arrays(self) -> dict[str, np.ndarray]:
        return {"heldout": self.heldout.astype(np.float16)}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz(data: bytes, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - a damaged file, named
        raise MetricsError(f"{what} cannot be read ({type(e).__name__}: {e})") from None


# ---- an index -------------------------------------------------------------------------------------------------
class TrainingIndex:
    """A training-set index: its description (``meta``) and, per space, its arrays (read and checked against
    the recorded sha256 on first use). Built in memory (``folder=None``, ``spaces`` given) for an ad hoc index."""

    def __init__(self, meta: dict[str, Any], folder: Path | None = None,
                 spaces: dict[str, SpaceData] | None = None, sha256: str | None = None):
        if meta.get("format") != FORMAT:
            raise MetricsError(f"training index {meta.get('name')!r} has format {meta.get('format')!r}, "
                               f"expected {FORMAT!r}")
        self.meta = meta
        self.folder = folder
        self.sha256 = sha256
        self._spaces: dict[str, SpaceData] = dict(spaces or {})
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    @property
    def source(self) -> dict[str, Any]:
        return dict(self.meta.get("source") or {})

    @property
    def spaces(self) -> tuple[str, ...]:
        return tuple(s for s in SPACES if s in self.meta.get("spaces", {}))

    @property
    def train_ids(self) -> list[str]:
        return list(self.meta.get("train_ids") or [])

    @property
    def heldout_ids(self) -> list[str]:
        return list(self.meta.get("heldout_ids") or [])

    @property
    def n_train(self) -> int:
        return int(self.meta["n_train"])

    @property
    def n_heldout(self) -> int:
        return int(self.meta["n_heldout"])

    @property
    def shipped(self) -> bool:
        return self.folder is not None and self.folder.resolve() == SHIPPED_DIR

    def summary(self) -> dict[str, Any]:
        """What provenance records about the index (no ids)."""
        return {"name": self.name, "sha256": self.sha256 or "ad hoc (built in memory)", "resolution": self.resolution,
                "source": self.source, "n_train": self.n_train, "n_heldout": self.n_heldout,
                "spaces": list(self.spaces), "cells": {s: self.meta["spaces"][s].get("cells") for s in self.spaces}}

    def stamp(self, space: str) -> dict[str, Any]:
        self._check_space(space)
        return dict(self.meta["spaces"][space].get("stamp") or {})

    def _check_space(self, space: str) -> None:
        if space not in self.spaces:
            raise MetricsError(f"training index {self.name!r} has no {space!r} features; it has "
                               f"{', '.join(self.spaces) or 'none'}")

    def _read(self, entry: dict[str, Any], what: str) -> dict[str, np.ndarray]:
        if self.folder is None:
            raise MetricsError(f"{what}: the index has no folder")
        path = self.folder / entry["file"]
        try:
            data = path.read_bytes()
        except OSError:
            raise MetricsError(f"{what} ({entry['file']}) is missing from {self.folder}") from None
        got = _sha256(data)
        if got != entry["sha256"]:
            raise MetricsError(f"{what} ({entry['file']}) has sha256 {got[:12]}…, the index records "
                               f"{entry['sha256'][:12]}…: the file is damaged or not the one the index was built "
                               "with (a Git LFS pointer?); restore it or rebuild the index")
        return _npz(data, what)

    def space(self, space: str) -> SpaceData:
        """The arrays of ``space`` (read once, sha256-checked)."""
        self._check_space(space)
        with self._lock:
            if space in self._spaces:
                return self._spaces[space]
            entry = self.meta["spaces"][space]
            main = self._read(entry["main"], f"training index {self.name!r} {space} features")
            held = self._read(entry["heldout"], f"training index {self.name!r} {space} held-out features")
            f32 = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v.astype(np.int64)) for k, v in main.items()}
            sd = SpaceData(space=space, train=f32["train"], heldout=held["heldout"].astype(np.float32),
                           train_nn=f32["train_nn"], heldout_nn=f32["heldout_nn"],
                           heldout_nn_index=f32["heldout_nn_index"], centres=f32["centres"],
                           train_cells=f32["train_cells"], heldout_cells=f32["heldout_cells"],
                           heldout_cell_nn=f32["heldout_cell_nn"], stamp=dict(entry.get("stamp") or {}))
            if len(sd.train) != self.n_train or len(sd.heldout) != self.n_heldout:
                raise MetricsError(f"training index {self.name!r} {space}: {len(sd.train)} training / "
                                   f"{len(sd.heldout)} held-out rows, the index records {self.n_train} / "
                                   f"{self.n_heldout}")
            self._spaces[space] = sd
            return sd

    def check_featurizer(self, space: str) -> dict[str, Any]:
        """This process's stamp for ``space``, refused (MetricsError) when it is not the index's network,
        weights and preprocessing (features would not be comparable)."""
        stored = self.stamp(space)
        current = space_stamp(space)
        if not stamps_agree(space, stored, current):
            raise MetricsError(f"training index {self.name!r} was built with another {space} featurizer "
                               f"(index: {stored.get('weights_sha256') or stored.get('fingerprint')}; here: "
                               f"{current.get('weights_sha256') or current.get('fingerprint')}); rebuild the index")
        return current

    def featurize(self, space: str, images: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Features of ``images`` comparable with this index's (resized to its resolution, same featurizer)."""
        self.check_featurizer(space)
        return featurize(space, images, self.resolution, progress)


# ---- finding indexes ------------------------------------------------------------------------------------------
def user_dir() -> Path:
    from services.common.config import get_settings

    return get_settings().home / "indexes"


def index_dirs() -> list[Path]:
    """Where indexes are looked for, in order: the shipped folder, then ``$SYNTHRAD_HOME/indexes``."""
    return [SHIPPED_DIR, user_dir()]


@dataclass(frozen=True)
class IndexInfo:
    name: str
    folder: Path
    description: str
    source: dict
    resolution: int
    n_train: int
    n_heldout: int
    spaces: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shipped": self.folder.resolve() == SHIPPED_DIR, "description": self.description,
                "source": self.source, "resolution": self.resolution, "n_train": self.n_train,
                "n_heldout": self.n_heldout, "spaces": list(self.spaces)}


def _read_meta(path: Path) -> tuple[dict[str, Any], str]:
    raw = path.read_bytes()
    meta = json.loads(raw)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError("not a training index")
    return meta, _sha256(raw)


def _scan() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in index_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.json")):
            name = f.name[:-5]
            if name in found or not NAME_RE.match(name):
                continue  # a shipped index is never shadowed
            try:
                meta, _ = _read_meta(f)
            except (OSError, ValueError):
                continue
            if meta.get("name") == name:
                found[name] = f
    return found


def list_indexes() -> list[IndexInfo]:
    out = []
    for name, f in sorted(_scan().items()):
        meta, _ = _read_meta(f)
        out.append(IndexInfo(name, f.parent, str(meta.get("description", "")), dict(meta.get("source") or {}),
                             int(meta["resolution"]), int(meta["n_train"]), int(meta["n_heldout"]),
                             tuple(s for s in SPACES if s in meta.get("spaces", {}))))
    return out


_CACHE: dict[tuple[str, float, int], TrainingIndex] = {}
_CACHE_LOCK = threading.Lock()


def load_index(name: str) -> TrainingIndex:
    """The index ``name`` (MetricsError listing the known ones otherwise); memoised per file version."""
    name = str(name or "").strip()
    if not NAME_RE.match(name):
        raise MetricsError(f"invalid index name {name[:40]!r} (lower-case letters, digits, '.', '_', '-')")
    found = _scan()
    if name not in found:
        raise MetricsError(f"unknown training index {name!r}; known: {', '.join(sorted(found)) or '(none)'} "
                           "(build one with python -m services.metrics.evaluation.indexes.build)")
    path = found[name]
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)
    with _CACHE_LOCK:
        if key not in _CACHE:
            meta, sha = _read_meta(path)
            _CACHE[key] = TrainingIndex(meta, path.parent, sha256=sha)
        return _CACHE[key]


def _views(v: Any) -> frozenset[str] | None:
    if v is None or (isinstance(v, str) and v.strip().lower() in ("all", "")):
        return None
    items = v.split(",") if isinstance(v, str) else list(v)
    return frozenset(str(x).strip().upper() for x in items if str(x).strip())


def source_matches(source: dict[str, Any], training: dict[str, Any]) -> bool:
    """Whether an index built from ``source`` holds the training set a descriptor's ``training`` block names:
    same dataset (folder name), layout, split and split rule (absent = ``recorded``), the same number of
    images when the block says, and the same views when both name them ("all" matches any when the counts
    agree)."""
    if not training or not source:
        return False
    if str(training.get("data")) != str(source.get("data")) or training.get("layout") != source.get("layout"):
        return False
    if str(training.get("split", "train")) != str(source.get("split", "train")):
        return False
    if str(training.get("split_by") or "recorded") != str(source.get("split_by") or "recorded"):
        return False
    n = training.get("images", training.get("num_images"))
    if n is not None and int(n) != int(source.get("images", -1)):
        return False
    tv, sv = _views(training.get("views")), _views(source.get("views"))
    return tv is None or sv is None or tv == sv


def model_training(model_id: str) -> dict[str, Any] | None:
    """The descriptor of a registered model (``None`` when it is not registered here)."""
    from services.generator import registry  # the descriptors' one reader (light: no model is loaded)

    try:
        path = registry.descriptor_file(registry.canonical_model_id(model_id))
    except Exception:  # noqa: BLE001 - unknown ids are simply unmapped
        return None
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def index_for_model(model_id: str | None) -> str | None:
    """The index of the training set of model ``model_id``: the descriptor's ``training_index`` when it names
    one, else the index whose ``source`` matches its ``training`` block (:func:`source_matches`)."""
    if not model_id:
        return None
    desc = model_training(model_id)
    if not desc:
        return None
    if desc.get("training_index"):
        return str(desc["training_index"])
    training = desc.get("training") or {}
    shipped_first = sorted(list_indexes(), key=lambda i: (i.folder.resolve() != SHIPPED_DIR.resolve(), i.name))
    for info in shipped_first:  # a user's copy of a shipped training set never shadows the shipped index
        if source_matches(info.source, training):
            return info.name
    return None


def resolve_index(name: str | None, model_id: str | None) -> TrainingIndex:
    """``name`` when given, else the index of the model's training set (MetricsError saying what to pass)."""
    if name:
        return load_index(name)
    found = index_for_model(model_id)
    if found is None:
        known = ", ".join(i.name for i in list_indexes()) or "(none)"
        raise MetricsError(f"no training-set index is known for model {model_id or '(unknown)'!r}; pass index "
                           f"(known: {known}) or data (the training data folder, to build one in memory)")
    return load_index(found)


def write_index(meta: dict[str, Any], spaces: dict[str, SpaceData], folder: Path) -> Path:
    """Write ``<name>.<space>[.heldout].npz`` and ``<name>.json`` (the sha256 of every file recorded in it)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = meta["name"]
    if not NAME_RE.match(name):
        raise MetricsError(f"invalid index name {name!r}")
    meta = json.loads(json.dumps(meta))
    for space, sd in spaces.items():
        entry = meta["spaces"].setdefault(space, {})
        for part, arrays in (("main", sd.main_arrays()), ("heldout", sd.heldout_arrays())):
            fname = f"{name}.{space}.npz" if part == "main" else f"{name}.{space}.heldout.npz"
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            data = buf.getvalue()
            if len(data) > MAX_FILE_BYTES:
                raise MetricsError(f"{fname} would be {len(data) / 2**20:.1f} MiB (limit 20 MiB)")
            (folder / fname).write_bytes(data)
            entry[part] = {"file": fname, "sha256": _sha256(data), "bytes": len(data)}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(meta, indent=1) + "\n")
    return path


__all__ = ["FORMAT", "IndexInfo", "SPACES", "SpaceData", "TrainingIndex", "featurize", "index_dirs",
           "index_for_model", "jl_projection", "list_indexes", "load_index", "pixel_features", "resolve_index",
           "source_matches", "space_stamp", "write_index"]
