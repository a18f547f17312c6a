"""NIH ChestX-ray14: ``Data_Entry_2017*.csv`` + image folder(s), or a ``labels.csv`` with
``path,split,finding_labels,patient_id,age,sex,view`` (the downscaled copy used in tests).

NIH labels every image for all fourteen findings, so each of our four is present or absent:
Atelectasis -> atelectasis, Effusion -> pleural_effusion, Cardiomegaly -> enlarged_cardiac_silhouette;
NIH has no lung-opacity label, so Infiltration | Consolidation | Pneumonia stands in for lung_opacity.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .records import IMAGE_SUFFIXES, DatasetError, Record, normalise_split, normalise_view

NIH_MAP = {
    "atelectasis": {"Atelectasis"},
    "lung_opacity": {"Infiltration", "Consolidation", "Pneumonia"},
    "pleural_effusion": {"Effusion"},
    "enlarged_cardiac_silhouette": {"Cardiomegaly"},
}
EXPECTED = ("Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv) next to the images/ folder(s), "
            "or labels.csv with columns path,split,finding_labels,patient_id,age,sex,view")


def nih_codes(finding_labels: str) -> tuple[int, int, int, int]:
    labels = {s.strip() for s in str(finding_labels).split("|")}
    return tuple(int(bool(labels & names)) for names in NIH_MAP.values())  # type: ignore[return-value]


def _table(root: Path) -> Path:
    entries = sorted(root.glob("Data_Entry_2017*.csv")) + sorted(root.glob("Data_Entry_2017*.csv.gz"))
    if entries:
        return entries[-1]  # the _v2020 revision sorts last
    if (root / "labels.csv").exists():
        return root / "labels.csv"
    raise DatasetError(f"no NIH ChestX-ray14 label table in {root}: expected {EXPECTED}")


def _index_images(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES):
                found.setdefault(name, Path(dirpath) / name)
    return found


def _official_splits(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for fname, split in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        if (root / fname).exists():
            out.update({line.strip(): split for line in (root / fname).read_text().splitlines() if line.strip()})
    return out


def load_nih(root: Path) -> tuple[list[Record], int]:
    """All records (no view filter) and how many listed images were missing on disk."""
    table = _table(root)
    df = pd.read_csv(table, dtype=str, keep_default_na=False)
    if "finding_labels" in df.columns:  # labels.csv variant
        missing_cols = {"path", "finding_labels"} - set(df.columns)
        if missing_cols:
            raise DatasetError(f"{table} lacks column(s) {', '.join(sorted(missing_cols))}; expected {EXPECTED}")
        recs, missing = [], 0
        for row in df.itertuples(index=False):
            path = root / row.path
            if not path.exists():
                missing += 1
                continue
            recs.append(Record(path, nih_codes(row.finding_labels), normalise_view(getattr(row, "view", None)),
                               str(getattr(row, "patient_id", "") or "") or None, normalise_split(getattr(row, "split", None))))
        return recs, missing
    needed = {"Image Index", "Finding Labels"}
    if needed - set(df.columns):
        raise DatasetError(f"{table} lacks column(s) {', '.join(sorted(needed - set(df.columns)))}; expected {EXPECTED}")
    images = _index_images(root)
    splits = _official_splits(root)
    recs, missing = [], 0
    for name, labels, pid, view in zip(df["Image Index"], df["Finding Labels"], df.get("Patient ID", [""] * len(df)),
                                       df.get("View Position", [""] * len(df))):
        path = images.get(name)
        if path is None:
            missing += 1
            continue
        recs.append(Record(path, nih_codes(labels), normalise_view(view), str(pid).lstrip("0") or None, splits.get(name)))
    if not recs and len(df):
        raise DatasetError(f"none of the {len(df)} images listed in {table.name} were found under {root}; "
                           "unpack the images_*.tar.gz archives there (images/ or images_001/images/ ...)")
    return recs, missing
