"""Build the reference artefacts shipped in ``services/metrics/references/`` (maintainers; needs ../shared/data).

    python -m services.metrics.build_references --data ../shared/data

Writes ``nih-cxr64-valid.npz`` (200 images) and ``nih-cxr64-train.npz`` (600 images): Inception pool3 features
(float32) + float64 stats, ``cxr-encoder`` features, spatial features, class labels (NIH folder: 0_normal /
1_abnormal), per-class mean images, 16 sample thumbnails, extractor stamps.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from services.metrics.cache import FeatureCache
from services.metrics.extractors import get_extractor
from services.metrics.references import HERE, Reference, save_reference
from services.metrics.sets import load_set
from services.metrics.sources import FolderSource


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--splits", default="valid,train")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    exs = [get_extractor("inception"), get_extractor("cxr-encoder")]
    for split in args.splits.split(","):
        t = time.time()
        root = Path(args.data) / "nih-chestxray14-64" / split
        sd = load_set(FolderSource(root), exs, spatial=True, variety=True, cache=FeatureCache(enabled=False))
        sd.description = f"NIH ChestX-ray14 64 px, {split} split ({sd.n} images; Wang et al. CVPR 2017)"
        sd.kind = "reference"
        name = f"nih-cxr64-{split}"
        out = save_reference(Reference(name=name, data=sd, source=None), Path(args.out) / f"{name}.npz")
        print(f"{out}: {sd.n} images, {out.stat().st_size / 1e6:.2f} MB, {time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
