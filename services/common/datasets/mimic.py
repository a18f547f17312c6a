"""MIMIC-CXR-JPG: ``mimic-cxr-2.0.0-metadata.csv(.gz)`` (dicom_id, subject_id, study_id, ViewPosition)
joined on (subject_id, study_id) with ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` (CheXpert-style labels, mapped
as for CheXpert); optional ``mimic-cxr-2.0.0-split.csv(.gz)``. Images:
``files/p<first 2 digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .chexpert import check_label_columns, chexpert_codes
from .records import DatasetError, Record, normalise_split, normalise_view

EXPECTED = ("mimic-cxr-2.0.0-metadata.csv[.gz] (dicom_id, subject_id, study_id, ViewPosition) and "
            "mimic-cxr-2.0.0-chexpert.csv[.gz] (subject_id, study_id, label columns), images under files/pXX/")


def _find(root: Path, kind: str, required: bool = True) -> Path | None:
    hits = sorted(root.glob(f"*{kind}.csv")) + sorted(root.glob(f"*{kind}.csv.gz"))
    if not hits and required:
        raise DatasetError(f"no MIMIC-CXR-JPG {kind} table in {root}: expected {EXPECTED}")
    return hits[0] if hits else None


def image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}" / f"{dicom_id}.jpg"


def load_mimic(root: Path, uncertain: str) -> tuple[list[Record], int]:
    meta_path, labels_path = _find(root, "metadata"), _find(root, "chexpert")
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    labels = pd.read_csv(labels_path, dtype=str, keep_default_na=False)
    for df, path, cols in ((meta, meta_path, ("dicom_id", "subject_id", "study_id")), (labels, labels_path, ("subject_id", "study_id"))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DatasetError(f"{path} lacks column(s) {', '.join(missing)}; expected {EXPECTED}")
    check_label_columns(labels, labels_path, EXPECTED)
    joined = meta.merge(labels, on=["subject_id", "study_id"], how="inner")
    split_path = _find(root, "split", required=False)
    splits: dict[str, str] = {}
    if split_path is not None:
        sdf = pd.read_csv(split_path, dtype=str, keep_default_na=False)
        splits = dict(zip(sdf["dicom_id"], sdf["split"]))
    recs, missing_files = [], 0
    for row in joined.to_dict("records"):
        path = image_path(root, row["subject_id"], row["study_id"], row["dicom_id"])
        if not path.exists():
            missing_files += 1
            continue
        recs.append(Record(path, chexpert_codes(row, uncertain), normalise_view(row.get("ViewPosition")),
                           row["subject_id"], normalise_split(splits.get(row["dicom_id"]))))
    if not recs and len(joined):
        raise DatasetError(f"none of the {len(joined)} labelled images were found under {root / 'files'}; "
                           "expected files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg")
    return recs, missing_files
