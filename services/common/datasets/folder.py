"""Plain folders: a CSV with a ``path`` column plus finding columns, or class-named subfolders.

CSV mode: ``labels.csv`` (or the folder's only ``*.csv``) with ``path`` and any of the finding names or
aliases (``atelectasis``, ``lung_opacity``, ``pleural_effusion``/``effusion``,
``enlarged_cardiac_silhouette``/``cardiomegaly``, ``no_finding``) as columns holding 1 / 0 / -1 / blank;
optional ``view``, ``patient_id``, ``split``.

Subfolder mode (e.g. Kermany pediatric pneumonia): the image's parent folder names its class —
``NORMAL`` = no finding (all absent), ``PNEUMONIA`` = lung_opacity present (others unspecified), a
finding name = that finding present. ``train``/``val``/``test`` folders above set the split.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from ..findings import FINDINGS, NO_FINDING, ConditionError, canonical_finding
from .records import (ABSENT, IMAGE_SUFFIXES, PRESENT, UNSPECIFIED, DatasetError, Record, _SPLITS, label_code,
                      normalise_split, normalise_view)

CLASS_FOLDERS = {"normal": NO_FINDING, "no_finding": NO_FINDING, "pneumonia": "lung_opacity"}
EXPECTED = ("a labels.csv with a 'path' column and finding columns (atelectasis, lung_opacity, pleural_effusion, "
            "enlarged_cardiac_silhouette, no_finding), or class subfolders such as NORMAL/ and PNEUMONIA/")


def _finding_columns(columns) -> dict[str, str]:
    out = {}
    for c in columns:
        try:
            out[c] = canonical_finding(c)
        except ConditionError:
            pass
    return out


def _codes(states: dict[str, int], no_finding: bool) -> tuple[int, int, int, int]:
    """Codes in FINDINGS order; with no_finding, findings left blank or missing are absent."""
    default = ABSENT if no_finding else UNSPECIFIED
    return tuple(default if states.get(f, UNSPECIFIED) == UNSPECIFIED else states[f] for f in FINDINGS)  # type: ignore[return-value]


def _load_csv(root: Path, table: Path, uncertain: str) -> tuple[list[Record], int]:
    df = pd.read_csv(table, dtype=str, keep_default_na=False)
    findings = _finding_columns(df.columns)
    if "path" not in df.columns or not findings:
        raise DatasetError(f"{table} has columns {', '.join(df.columns)}; expected {EXPECTED}")
    recs, missing = [], 0
    for row in df.to_dict("records"):
        path = root / row["path"]
        if not path.exists():
            missing += 1
            continue
        states = {f: label_code(row[c], uncertain) for c, f in findings.items() if f != NO_FINDING}
        no_finding = any(label_code(row[c]) == PRESENT for c, f in findings.items() if f == NO_FINDING)
        if no_finding and PRESENT in states.values():
            raise DatasetError(f"{table}: row for {row['path']} has no_finding = 1 and a present finding")
        recs.append(Record(path, _codes(states, no_finding), normalise_view(row.get("view")),
                           row.get("patient_id") or None, normalise_split(row.get("split"))))
    return recs, missing


#: Kermany file names carry the patient: ``person12_virus_3.jpeg``, ``IM-0115-0001.jpeg``, ``NORMAL2-IM-1345-0001.jpeg``
_KERMANY_PATIENT = re.compile(r"^(person\d+)_|^((?:NORMAL2-)?IM-\d+)-")


def kermany_patient(name: str) -> str | None:
    m = _KERMANY_PATIENT.match(name)
    return (m.group(1) or m.group(2)) if m else None


def _class_of(folder: str) -> str | None:
    key = folder.strip().lower()
    if key in CLASS_FOLDERS:
        return CLASS_FOLDERS[key]
    try:
        return canonical_finding(key)
    except ConditionError:
        return None


def _load_subfolders(root: Path) -> tuple[list[Record], int]:
    recs, unknown = [], set()
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        images = sorted(f for f in files if f.lower().endswith(IMAGE_SUFFIXES))
        if not images:
            continue
        rel = Path(dirpath).relative_to(root)
        cls = _class_of(rel.name) if rel.parts else None
        if cls is None:
            unknown.add(str(rel) or ".")
            continue
        split = next((_SPLITS[p.lower()] for p in rel.parts[:-1] if p.lower() in _SPLITS), None)
        codes = _codes({} if cls == NO_FINDING else {cls: PRESENT}, cls == NO_FINDING)
        for name in images:
            recs.append(Record(Path(dirpath) / name, codes, None, kermany_patient(name), split))
    if unknown:
        raise DatasetError(f"images in folder(s) {', '.join(sorted(unknown)[:5])} under {root} have no known class; "
                           f"expected {EXPECTED}")
    return recs, 0


def load_folder(root: Path, uncertain: str) -> tuple[list[Record], int]:
    tables = [root / "labels.csv"] if (root / "labels.csv").exists() else sorted(root.glob("*.csv"))
    if len(tables) > 1:
        raise DatasetError(f"several CSV files in {root} ({', '.join(t.name for t in tables)}); name the one "
                           "to use labels.csv")
    if tables:
        return _load_csv(root, tables[0], uncertain)
    recs, missing = _load_subfolders(root)
    if not recs:
        raise DatasetError(f"no images found in {root}; expected {EXPECTED}")
    return recs, missing
