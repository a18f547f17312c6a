"""Typed scoring inputs: what the real and the synthetic set of a :func:`~services.metrics.api.score` call are.

* :class:`BatchId` — a committed batch in a BatchStore (``store_url``; default: the ``store_url`` given to
  ``score``, else ``get_settings().resolved_store_url``).
* :class:`Folder` — a folder of images (recursive; label = first sub-folder), or a stored batch's folder (one
  holding ``manifest.json``, any batch format, read and verified through the store).
* :class:`FeatureFile` — a ``.npy`` feature file (n × d) made with the requested extractor.
* :class:`ReferenceSet` — a registered reference by name (``references.register_reference``; shipped:
  ``nih-cxr64``, ``nih-cxr64-train``).
* :class:`ReferenceFile` — a reference ``.npz`` (``references.save_reference``).

``score`` also takes an :class:`~services.metrics.sources.ImageSource`, a numpy array (2-D: features; 3-D or
4-D: a stack of images) and, for backwards compatibility, a string or path, which :func:`parse_input` turns
into one of the kinds above. :func:`open_input` opens a kind for loading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np

from services.metrics.errors import InputNotFound, MetricsError

if TYPE_CHECKING:
    from services.metrics.cache import FeatureCache
    from services.metrics.sources import ImageSource

Side = Literal["real", "synthetic"]
BATCH_PREFIX = "batch:"
REFERENCE_PREFIX = "reference:"


def _path(p: str | os.PathLike) -> Path:
    return Path(p).expanduser()


@dataclass(frozen=True)
class BatchId:
    id: str
    store_url: str | None = None


@dataclass(frozen=True)
class Folder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path))


@dataclass(frozen=True)
class FeatureFile:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path))


@dataclass(frozen=True)
class ReferenceSet:
    name: str


@dataclass(frozen=True)
class ReferenceFile:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _path(self.path))


ScoringInput = Union[BatchId, Folder, FeatureFile, ReferenceSet, ReferenceFile]


def parse_input(spec: str | os.PathLike, side: Side, cache: "FeatureCache | None" = None) -> ScoringInput:
    """The one reading of a string (CLI argument, older callers) as a scoring input. First match wins:

    1. ``batch:<id>`` → :class:`BatchId`; ``reference:<name>`` → :class:`ReferenceSet` (explicit, nothing guessed);
    2. a name ending in ``.npy`` → :class:`FeatureFile`;
    3. an existing folder → :class:`Folder` (a folder of images or a stored batch's folder);
    4. an existing ``.npz`` file → :class:`ReferenceFile`; any other existing file is an error;
    5. real side: a registered reference name → :class:`ReferenceSet`;
    6. synthetic side: anything else → :class:`BatchId` (in the ``store_url`` given to ``score``).

    A local folder therefore wins over a stored batch or a reference of the same name; pass a :class:`BatchId` /
    :class:`ReferenceSet` (or a ``batch:`` / ``reference:`` string) to name one explicitly."""
    from services.metrics import references

    s = os.fspath(spec)
    if s.startswith(BATCH_PREFIX):
        return BatchId(s[len(BATCH_PREFIX):])
    if s.startswith(REFERENCE_PREFIX):
        return ReferenceSet(s[len(REFERENCE_PREFIX):])
    p = _path(s)
    if s.lower().endswith(".npy"):
        return FeatureFile(p)
    if p.is_dir():
        return Folder(p)
    if p.is_file() and p.suffix.lower() == ".npz":
        return ReferenceFile(p)
    if p.exists():
        raise MetricsError(f"{side} set {s}: expected a folder of images, a .npy feature file or a reference .npz")
    if side == "real":
        if references.is_reference(s, cache):
            return ReferenceSet(s)
        known = ", ".join(references.list_references(cache)) or "none"
        raise InputNotFound(f"real set {s!r} not found: no such folder or file, and no registered reference by that "
                            f"name (known: {known})")
    return BatchId(s)


Opened = tuple[str, Any]  # ("source", ImageSource) | ("features", ndarray) | ("reference", Reference)


def open_input(spec: Any, side: Side, store_url: str | None = None, cache: "FeatureCache | None" = None) -> Opened:
    """``spec`` (a typed input, an ImageSource, an array, or a string parsed by :func:`parse_input`) opened:
    ``("source", ImageSource)``, ``("features", (n, d) array)`` or ``("reference", Reference)``."""
    from services.metrics import references
    from services.metrics.sources import ArraySource, BatchSource, FolderSource, ImageSource, load_feature_file

    if isinstance(spec, ImageSource):
        return "source", spec
    if isinstance(spec, np.ndarray):
        if spec.ndim == 2:  # (n, d) features; image stacks are (n, H, W), (n, H, W, 3) or (n, C, H, W)
            return "features", spec
        return "source", ArraySource(list(spec), name=f"{side} arrays")
    guessed = isinstance(spec, (str, os.PathLike))
    inp = parse_input(spec, side, cache) if guessed else spec
    if isinstance(inp, BatchId):
        return "source", _open_batch(inp, side, store_url, guessed and not os.fspath(spec).startswith(BATCH_PREFIX))
    if isinstance(inp, Folder):
        if not inp.path.is_dir():
            raise InputNotFound(f"{side} folder {inp.path} not found")
        if (inp.path / "manifest.json").is_file():  # a stored batch (e.g. the folder `synthrad generate` prints)
            return "source", BatchSource.from_folder(inp.path)
        return "source", FolderSource(inp.path)
    if isinstance(inp, FeatureFile):
        if not inp.path.is_file():
            raise InputNotFound(f"{side} feature file {inp.path} not found")
        return "features", load_feature_file(inp.path)
    if isinstance(inp, ReferenceSet):
        return "reference", references.get_reference(inp.name, cache)
    if isinstance(inp, ReferenceFile):
        if not inp.path.is_file():
            raise InputNotFound(f"{side} reference file {inp.path} not found")
        return "reference", references.load_reference_file(inp.path)
    raise MetricsError(f"{side} set: cannot score a {type(spec).__name__} (give a BatchId, Folder, FeatureFile, "
                       "ReferenceSet, ReferenceFile, ImageSource, array or path)")


def _open_batch(inp: BatchId, side: Side, store_url: str | None, guessed: bool) -> "ImageSource":
    from services.common.store import BatchNotFound, InvalidBatchId, StoreError
    from services.metrics.sources import BatchSource

    try:
        return BatchSource(inp.id, inp.store_url or store_url)
    except (BatchNotFound, InvalidBatchId) as e:
        if guessed:
            raise InputNotFound(f"{side} set {inp.id!r} not found: no such folder or .npy file, and no stored batch "
                                "with that id") from e
        raise InputNotFound(f"{side} set: no stored batch {inp.id!r} ({e})") from e
    except StoreError as e:  # BatchDamaged: a file missing or changed since the batch was written
        raise MetricsError(f"cannot open batch {inp.id!r}: {e}") from e
