"""Build a training-set index (maintainers; needs the dataset, the product never does).

    python -m services.metrics.evaluation.indexes.build --data ../shared/data/nih-chestxray14-64 \\
        --layout nih --views PA,AP --split-by recorded --name nih-cxr64-train
    python -m services.metrics.evaluation.indexes.build --data ../shared/data/kermany-pneumonia-224/train \\
        --layout folder --split-by patient --resolution 128 --name kermany-train

The training split of the dataset is what the generator saw; the held-out split (``valid`` for
``--split-by recorded``, the patient-disjoint ``test`` split for ``--split-by patient``) calibrates the
thresholds. Images are read exactly as :func:`services.metrics.evaluation.inputs.load_real` reads them (resized
and centre-cropped to ``--resolution``, the model's). Written to ``--out`` (default: the shipped folder).
``--features-cache DIR`` keeps the raw features so that a rebuild (other cells) skips the extraction.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from services.metrics.evaluation.indexes import (FORMAT, SHIPPED_DIR, SPACES, SpaceData, TrainingIndex, featurize,
                                                 space_stamp, write_index)
from services.metrics.evaluation.indexes.neighbours import assign_cells, fit_cells, in_cell_nearest, nearest

DEFAULT_CELLS = 10
QUANTILES = (0.001, 0.01, 0.05, 0.1, 0.5)


def _f16(x: np.ndarray) -> np.ndarray:
    """Features as they are stored (float16) and read back (float32): calibration uses exactly these."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def calibrate(space: str, train: np.ndarray, heldout: np.ndarray, cells: int = DEFAULT_CELLS,
              stamp: dict | None = None, seed: int = 0) -> SpaceData:
    """The arrays of one space of an index from its raw training and held-out features."""
    t, h = _f16(train), _f16(heldout)
    if len(t) < 2 or len(h) < 1:
        raise ValueError(f"{space}: an index needs at least 2 training and 1 held-out image")
    train_nn, _ = nearest(t, t, exclude_self=True)
    hnn, hidx = nearest(h, t)
    centres = fit_cells(t, cells, seed)
    tc, hc = assign_cells(t, centres), assign_cells(h, centres)
    return SpaceData(space=space, train=t, heldout=h, train_nn=train_nn.astype(np.float32),
                     heldout_nn=hnn.astype(np.float32), heldout_nn_index=hidx, centres=centres, train_cells=tc,
                     heldout_cells=hc, heldout_cell_nn=in_cell_nearest(h, hc, t, tc).astype(np.float32),
                     stamp=dict(stamp or {}))


def _cached_features(space: str, images: np.ndarray, ids: Sequence[str], tag: str, cache: Path | None,
                     log: Callable[[str], None]) -> np.ndarray:
    stamp = space_stamp(space)
    key = hashlib.sha256(json.dumps([stamp, tag, list(ids), images.shape], sort_keys=True, default=str)
                         .encode()).hexdigest()[:24]
    path = cache / f"{space}-{key}.npy" if cache else None
    if path is not None and path.exists():
        feats = np.load(path, allow_pickle=False)
        if len(feats) == len(images):
            log(f"{space} {tag}: {len(feats)} features from the cache")
            return feats
    done = [0]
    t0 = time.perf_counter()

    def progress(n: int) -> None:
        done[0] += n
        if done[0] % 500 < n or done[0] == len(images):
            log(f"{space} {tag}: {done[0]}/{len(images)} ({time.perf_counter() - t0:.0f} s)")

    feats = featurize(space, images, None, progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, feats)
    return feats


def build_index(real, name: str, spaces: Sequence[str] = SPACES, cells: int = DEFAULT_CELLS,
                description: str = "", features_cache: Path | None = None,
                log: Callable[[str], None] = lambda s: None) -> TrainingIndex:
    """An in-memory index of ``real`` (a :class:`~services.metrics.evaluation.inputs.RealData`: ``train`` is the
    training set, ``test`` the held-out split). :func:`write_index` writes it."""
    t0 = time.perf_counter()
    spec = real.spec
    source = {"data": Path(spec.path).expanduser().name, "dataset": spec.display, "layout": spec.layout,
              "views": list(spec.views) if spec.views else "all", "split": "train",
              "heldout_split": "valid" if spec.split_by == "recorded" else "test",
              "split_by": spec.split_by, "images": int(len(real.train_images)),
              "heldout_images": int(len(real.test_images))}
    meta = {"format": FORMAT, "name": name, "description": description or
            f"training set of {source['data']} ({spec.split_by} split, {source['images']} images)",
            "source": source, "resolution": int(real.resolution), "n_train": int(len(real.train_images)),
            "n_heldout": int(len(real.test_images)), "train_ids": list(real.train_ids),
            "heldout_ids": list(real.test_ids), "spaces": {}}
    out: dict[str, SpaceData] = {}
    tag = f"{source['data']}:{spec.layout}:{spec.split_by}:{real.resolution}"
    for space in spaces:
        stamp = space_stamp(space)
        tr = _cached_features(space, real.train_images, real.train_ids, tag + ":train", features_cache, log)
        he = _cached_features(space, real.test_images, real.test_ids, tag + ":heldout", features_cache, log)
        sd = calibrate(space, tr, he, cells, stamp)
        out[space] = sd
        meta["spaces"][space] = {
            "stamp": stamp, "dims": int(sd.train.shape[1]), "dtype": "float16", "cells": sd.cells,
            "distance": "euclidean", "heldout_nn_quantiles": {str(q): sd.threshold(q) for q in QUANTILES}}
        log(f"{space}: held-out NN distance 1 % quantile {sd.threshold(0.01):.4g}, median {sd.threshold(0.5):.4g}")
    import torch

    meta["built"] = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "seconds": round(time.perf_counter() - t0, 1), "numpy": np.__version__,
                     "torch": torch.__version__}
    return TrainingIndex(meta, None, out)


def main(argv: Sequence[str] | None = None) -> int:
    from services.metrics.evaluation.inputs import DataSpec, load_real

    ap = argparse.ArgumentParser(prog="python -m services.metrics.evaluation.indexes.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset folder (the generator's training data)")
    ap.add_argument("--layout", default="auto", help="nih | folder | chexpert | mimic | auto")
    ap.add_argument("--views", default=None, help="kept views, comma-separated (default: all)")
    ap.add_argument("--split-by", default="recorded", choices=("recorded", "patient"))
    ap.add_argument("--name", required=True, help="index name (lower-case, e.g. nih-cxr64-train)")
    ap.add_argument("--resolution", type=int, default=64, help="the model's resolution (images are read at it)")
    ap.add_argument("--spaces", default=",".join(SPACES), help=f"comma-separated, of {', '.join(SPACES)}")
    ap.add_argument("--cells", type=int, default=DEFAULT_CELLS, help="k-means cells of C_T")
    ap.add_argument("--description", default="")
    ap.add_argument("--out", default=str(SHIPPED_DIR), help="folder to write to (default: the shipped indexes)")
    ap.add_argument("--features-cache", default=None, help="folder keeping raw features between builds")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine may be shared)")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, a.threads))
    spaces = [s.strip() for s in a.spaces.split(",") if s.strip()]
    bad = [s for s in spaces if s not in SPACES]
    if bad:
        ap.error(f"unknown space(s) {', '.join(bad)}; choose from {', '.join(SPACES)}")

    def log(msg: str) -> None:
        print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    spec = DataSpec(path=a.data, layout=a.layout, split_by=a.split_by,
                    views=[v.strip().upper() for v in a.views.split(",")] if a.views else None)
    if spec.layout == "auto":
        from services.metrics.evaluation.inputs import resolve_layout

        spec = spec.model_copy(update={"layout": resolve_layout(spec)})
    log(f"reading {spec.path} ({spec.layout}, split by {spec.split_by}) at {a.resolution} px")
    real = load_real(spec, a.resolution)
    log(f"{len(real.train_images)} training, {len(real.test_images)} held-out images")
    index = build_index(real, a.name, spaces, a.cells, a.description,
                        Path(a.features_cache) if a.features_cache else None, log)
    path = write_index(index.meta, {s: index.space(s) for s in spaces}, Path(a.out))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
