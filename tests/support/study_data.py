"""Inputs of a reader study made by the tests: a store with two batches of two models (effusion present /
absent) and a small NIH-layout real folder (labels.csv) with both states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from services.common.findings import Condition
from services.common.store import BatchStore


def make_batches(store_dir: Path, n: int = 4, size: int = 32) -> tuple[str, list[str]]:
    """Two batches: model-a with effusion present, model-b with effusion absent; returns (store url, ids)."""
    store = BatchStore(store_dir)
    ids = []
    rng = np.random.default_rng(7)
    for model, present in (("model-a", True), ("model-b", False)):
        cond = Condition.from_findings(present=["pleural_effusion"]) if present else \
            Condition.from_findings(absent=["pleural_effusion"])
        with store.create(model, (model[-1] * 16), "eager", "png") as w:
            for i in range(n):
                w.add(rng.random((size, size)).astype(np.float32), seed=100 + i, condition=cond)
        ids.append(w.batch_id)
    return str(store_dir), ids


def make_real_folder(root: Path, n_each: int = 6, size: int = 48) -> Path:
    """NIH labels.csv layout: ``n_each`` images with 'Effusion' and ``n_each`` with 'No Finding'."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    lines = ["path,split,finding_labels,patient_id,age,sex,view"]
    for i in range(2 * n_each):
        label = "Effusion" if i < n_each else "No Finding"
        name = f"img/{i:04d}_{label.replace(' ', '_').lower()}.png"
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(root / name)
        lines.append(f"{name},train,{label},{1000 + i},50,F,PA")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root
