"""The two sides of an evaluation, as typed arrays.

* :class:`SyntheticSet`: the generated images with the condition each was asked for (codes per finding:
  0 absent, 1 present, 2 unspecified, in ``services.common.findings.FINDINGS`` order), their seeds and model.
  Read from a stored batch (:func:`load_batch`, verified through the store), or built from arrays.
* :class:`RealData`: a labelled real dataset split patient-disjointly into ``train`` and ``test``
  (:func:`load_real`; ``split_by="recorded"`` keeps a dataset's own train/valid split, as the NIH models were
  trained on it). :class:`DataSpec` names it; the serving layer resolves a dataset *name* from the settings'
  ``datasets`` (requests never carry paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from pydantic import BaseModel, Field

from services.common.findings import FINDINGS
from services.metrics.errors import MetricsError


@dataclass
class SyntheticSet:
    images: np.ndarray  # (n, h, w) float32 [0, 1]
    codes: np.ndarray  # (n, 4) int8: 0 absent, 1 present, 2 unspecified (the requested condition)
    seeds: list[int] = field(default_factory=list)
    model_id: str | None = None
    model_hash: str | None = None
    batch_id: str | None = None
    description: str = "arrays"
    resolution: int | None = None  # the model's resolution (images may be stored at it)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.float32)
        if self.images.ndim == 4:  # (n, h, w, c) → grey
            self.images = self.images.mean(-1)
        self.codes = np.asarray(self.codes, dtype=np.int8).reshape(len(self.images), len(FINDINGS))
        if not self.seeds:
            self.seeds = list(range(len(self.images)))

    @property
    def n(self) -> int:
        return int(len(self.images))


def load_batches(batch_ids: "Sequence[str]", store_url: str | None = None) -> SyntheticSet:
    """Several committed batches of one model as one set (a batch has one condition; evaluations that compare
    conditions — present vs absent — read one batch per condition)."""
    ids = list(dict.fromkeys(str(b) for b in batch_ids))
    if not ids:
        raise MetricsError("no batch given")
    sets = [load_batch(b, store_url) for b in ids]
    if len(sets) == 1:
        return sets[0]
    models = {(s.model_id, s.model_hash) for s in sets}
    if len(models) != 1:
        raise MetricsError("the batches come from different models ("
                           + ", ".join(sorted(str(m[0]) for m in models)) + "); evaluate one model at a time")
    shapes = {s.images.shape[1:] for s in sets}
    if len(shapes) != 1:
        raise MetricsError(f"the batches hold different image sizes {sorted(shapes)}")
    first = sets[0]
    return SyntheticSet(np.concatenate([s.images for s in sets]), np.concatenate([s.codes for s in sets]),
                        [x for s in sets for x in s.seeds], first.model_id, first.model_hash, ",".join(ids),
                        f"{len(ids)} batches of {first.model_id} ({sum(s.n for s in sets)} images)", first.resolution)


def load_batch(batch_id: str, store_url: str | None = None) -> SyntheticSet:
    """A committed batch of a store (default: the settings' store), every file checked against its manifest."""
    from services.common.config import get_settings
    from services.common.store import BatchStore, StoreError

    store = BatchStore(store_url or get_settings().resolved_store_url)
    try:
        manifest = store.get(batch_id)
        images, codes, seeds = [], [], []
        for rec, img in store.iter_images(batch_id):
            images.append(img if img.ndim == 2 else img.mean(-1))
            codes.append(rec.condition.codes())
            seeds.append(int(rec.seed))
    except StoreError as e:
        raise MetricsError(str(e)) from None
    if not images:
        raise MetricsError(f"batch {batch_id} holds no images")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise MetricsError(f"batch {batch_id} mixes image sizes {sorted(shapes)}")
    return SyntheticSet(np.stack(images), np.asarray(codes, np.int8), seeds, manifest.model_id, manifest.model_hash,
                        manifest.batch_id, f"batch {manifest.batch_id} ({manifest.model_id})", images[0].shape[0])


class DataSpec(BaseModel):
    """A labelled real dataset on this machine (the CLI takes a folder; the service a configured name)."""

    path: str = Field(description="dataset folder (NIH labels.csv, Kermany NORMAL/ PNEUMONIA/ folders, ...)")
    layout: str = Field("auto", description="nih | chexpert | mimic | folder | auto")
    views: list[str] | None = Field(None, description="kept views (None: all)")
    split_by: str = Field("patient", description="patient (hash of the patient id: train 0.8 / test 0.2) or "
                                                 "recorded (the dataset's own train / valid)")
    name: str | None = Field(None, description="the dataset's name in reports (default: the folder's name)")

    @property
    def display(self) -> str:
        from pathlib import Path

        return self.name or Path(self.path).name


@dataclass
class RealData:
    spec: DataSpec
    resolution: int
    train_images: np.ndarray  # (n, r, r) float32 [0, 1]
    train_codes: np.ndarray  # (n, 4) int8
    test_images: np.ndarray
    test_codes: np.ndarray
    train_ids: list[str] = field(default_factory=list)  # file names relative to the dataset folder
    test_ids: list[str] = field(default_factory=list)

    @property
    def is_binary_pneumonia(self) -> bool:
        """Kermany-like: every image is normal (all absent) or pneumonia (lung_opacity present)."""
        from services.common.findings import FINDINGS as F

        j = F.index("lung_opacity")
        c = np.concatenate([self.train_codes, self.test_codes])
        others = np.delete(c, j, axis=1)
        return bool(np.isin(c[:, j], (0, 1)).all() and ((others == 2) | (others == 0)).all()
                    and not ((others == 0).all(1) & (c[:, j] == 1)).all())


def resolve_layout(spec: DataSpec) -> str:
    from pathlib import Path

    from services.common.datasets.loading import guess_layout

    if spec.layout != "auto":
        return spec.layout
    layout = guess_layout(Path(spec.path).expanduser())
    if layout is None:
        raise MetricsError(f"cannot tell the layout of dataset {spec.display!r}; pass --layout nih|folder|chexpert|mimic")
    return layout


def load_real(spec: DataSpec, resolution: int, splits: Sequence[str] = ("train", "test"),
              cache_dir: str | None = "auto") -> RealData:
    """Images (resized + centre-cropped to ``resolution``) and finding codes of ``spec``'s train and test splits.
    ``test`` is the patient-disjoint test split (``split_by="patient"``) or the recorded ``valid`` split."""
    from pathlib import Path

    from services.common.datasets import XrayDataset, load_records
    from services.common.datasets.records import DatasetError

    layout = resolve_layout(spec)
    out: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
    root = Path(spec.path).expanduser()
    for split in splits:
        name = "valid" if (split == "test" and spec.split_by == "recorded") else split
        try:
            recs = load_records(root, layout, views=spec.views or "all", split=name, split_by=spec.split_by)
        except DatasetError as e:
            raise MetricsError(str(e)) from None
        if not recs:
            raise MetricsError(f"dataset {spec.display!r} has no images in its {name} split")
        ds = XrayDataset(recs, resolution, cache_dir=cache_dir)
        xs, cs = zip(*(ds[i] for i in range(len(ds))))
        x = (np.stack([np.asarray(v)[0] for v in xs]).astype(np.float32) + 1.0) / 2.0
        ids = [str(Path(r.path).resolve().relative_to(root.resolve())) for r in recs]
        out[split] = (x, np.stack([np.asarray(c) for c in cs]).astype(np.int8), ids)
    tr = out.get("train", (np.zeros((0, resolution, resolution), np.float32), np.zeros((0, 4), np.int8), []))
    te = out.get("test", (np.zeros((0, resolution, resolution), np.float32), np.zeros((0, 4), np.int8), []))
    return RealData(spec, resolution, tr[0], tr[1], te[0], te[1], tr[2], te[2])


def resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """(n, h, w) float [0, 1] → (n, r, r) (area-antialiased bilinear when shrinking)."""
    import torch
    import torch.nn.functional as F

    x = np.asarray(images, dtype=np.float32)
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    t = torch.from_numpy(x)[:, None]
    t = F.interpolate(t, size=(resolution, resolution), mode="bilinear", align_corners=False,
                      antialias=x.shape[-1] > resolution)
    return t[:, 0].clamp(0, 1).numpy()


def crop_border(images: np.ndarray, fraction: float) -> np.ndarray:
    """The bias control of the published experiment: cut ``fraction`` of the side from every edge (where burned-in
    laterality letters and labels sit) and resize back to the original size, so the classifier never sees it."""
    x = np.asarray(images, dtype=np.float32)
    if not 0.0 <= fraction < 0.5:
        raise MetricsError(f"crop_border must be in [0, 0.5), got {fraction}")
    if fraction == 0.0 or len(x) == 0:
        return x
    h, w = x.shape[-2:]
    dy, dx = int(round(h * fraction)), int(round(w * fraction))
    if dy == 0 and dx == 0:
        return x
    return resize(x[:, dy:h - dy, dx:w - dx], h) if h == w else x[:, dy:h - dy, dx:w - dx]
