"""CheXpert (``train.csv`` / ``valid.csv``) and the CheXpert-style label columns MIMIC-CXR shares.

Label cells: 1 present, 0 absent, -1 uncertain (policy ignore / positive / negative), blank = not
mentioned -> unspecified, except that a row with "No Finding" = 1 has its blank findings absent.
lung_opacity = "Lung Opacity", or present when Consolidation or Pneumonia is (they are lung opacities in
the CheXpert hierarchy); enlarged_cardiac_silhouette = "Cardiomegaly" ("Enlarged Cardiomediastinum"
also covers the mediastinum and is not used).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .records import ABSENT, PRESENT, UNSPECIFIED, DatasetError, Record, label_code, normalise_view

LABEL_COLUMNS = {
    "atelectasis": ("Atelectasis",),
    "lung_opacity": ("Lung Opacity", "Consolidation", "Pneumonia"),
    "pleural_effusion": ("Pleural Effusion",),
    "enlarged_cardiac_silhouette": ("Cardiomegaly",),
}
REQUIRED = ("Atelectasis", "Lung Opacity", "Pleural Effusion", "Cardiomegaly")
EXPECTED = ("train.csv and/or valid.csv with columns Path, Frontal/Lateral, AP/PA, No Finding, Atelectasis, "
            "Lung Opacity, Pleural Effusion, Cardiomegaly, ... (the CheXpert-v1.0 or -small folder)")


def check_label_columns(df: pd.DataFrame, table: Path, expected: str) -> None:
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DatasetError(f"{table} lacks label column(s) {', '.join(missing)}; expected {expected}")


def chexpert_codes(row: dict, uncertain: str) -> tuple[int, int, int, int]:
    """Map one row's CheXpert-style cells onto FINDINGS codes."""
    no_finding = label_code(row.get("No Finding"), "ignore") == PRESENT
    out = []
    for columns in LABEL_COLUMNS.values():
        codes = [label_code(row.get(c), uncertain) for c in columns if c in row]
        code = PRESENT if PRESENT in codes[1:] else codes[0]
        if code == UNSPECIFIED and no_finding:
            code = ABSENT
        out.append(code)
    return tuple(out)  # type: ignore[return-value]


def _resolver(root: Path, sample: list[str], table: Path):
    """Paths in CheXpert tables start with the dataset folder's own name; find the base that works."""
    for base in (root, root.parent):
        if any((base / p).exists() for p in sample):
            return lambda p, base=base: base / p
    if any((root / Path(*Path(p).parts[1:])).exists() for p in sample if len(Path(p).parts) > 1):
        return lambda p: root / Path(*Path(p).parts[1:])
    raise DatasetError(f"images listed in {table} (e.g. {sample[0]}) were not found under {root} or its parent; "
                       "point PATH at the unpacked CheXpert folder that holds train.csv and train/")


def load_chexpert(root: Path, uncertain: str) -> tuple[list[Record], int]:
    tables = [(root / f"{s}.csv", s) for s in ("train", "valid") if (root / f"{s}.csv").exists()]
    if not tables:
        raise DatasetError(f"no CheXpert label table in {root}: expected {EXPECTED}")
    recs, missing = [], 0
    for table, split in tables:
        df = pd.read_csv(table, dtype=str, keep_default_na=False)
        check_label_columns(df, table, EXPECTED)
        if "Path" not in df.columns:
            raise DatasetError(f"{table} lacks the Path column; expected {EXPECTED}")
        if df.empty:
            continue
        resolve = _resolver(root, list(df["Path"][:20]), table)
        for row in df.to_dict("records"):
            path = resolve(row["Path"])
            if not path.exists():
                missing += 1
                continue
            lateral = str(row.get("Frontal/Lateral", "")).strip().lower() == "lateral"
            view = "LATERAL" if lateral else normalise_view(row.get("AP/PA"))
            m = re.search(r"patient\d+", row["Path"])
            recs.append(Record(path, chexpert_codes(row, uncertain), view, m.group(0) if m else None, split))
    return recs, missing
