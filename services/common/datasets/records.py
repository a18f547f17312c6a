"""The common record every dataset adapter produces, label-value helpers, and summaries."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..findings import FINDINGS, Condition

ABSENT, PRESENT, UNSPECIFIED = 0, 1, 2
UNCERTAIN_POLICIES = ("ignore", "positive", "negative")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".npz", ".tif", ".tiff", ".bmp")
_SPLITS = {"train": "train", "training": "train", "val": "valid", "valid": "valid", "validate": "valid",
           "validation": "valid", "dev": "valid", "test": "test", "testing": "test"}


class DatasetError(ValueError):
    """A dataset folder that does not match its layout; the message says what was expected."""


@dataclass(frozen=True)
class Record:
    """One image: its file, finding codes (FINDINGS order; 0 absent, 1 present, 2 unspecified), view, ids."""

    path: Path
    codes: tuple[int, int, int, int]
    view: str | None = None
    patient_id: str | None = None
    split: str | None = None

    def condition(self) -> Condition:
        return Condition.from_codes(self.codes)


def normalise_split(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip().lower()
    return _SPLITS.get(text, text or None)


def normalise_view(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip().upper()
    return text or None


def label_code(value, uncertain: str = "ignore") -> int:
    """A CheXpert-style cell (1 / 0 / -1 / blank, or words) -> 0 / 1 / 2 under the uncertain-label policy."""
    if value is None or (isinstance(value, float) and value != value):
        return UNSPECIFIED
    text = str(value).strip().lower()
    if text in ("", "nan", "unspecified", "unknown"):
        return UNSPECIFIED
    if text in ("1", "1.0", "present", "positive", "yes", "true"):
        return PRESENT
    if text in ("0", "0.0", "absent", "negative", "no", "false"):
        return ABSENT
    if text in ("-1", "-1.0", "uncertain", "u"):
        return {"ignore": UNSPECIFIED, "positive": PRESENT, "negative": ABSENT}[uncertain]
    raise DatasetError(f"label value {value!r} not understood; use 1, 0, -1 (uncertain) or leave blank")


def check_uncertain(policy: str) -> str:
    if policy not in UNCERTAIN_POLICIES:
        raise DatasetError(f"uncertain-label policy {policy!r} unknown; use one of {', '.join(UNCERTAIN_POLICIES)}")
    return policy


def dataset_summary(records: Iterable[Record]) -> dict:
    """Counts per finding state, per view, per split, and present findings per view (JSON-serialisable)."""
    records = list(records)
    states = {f: Counter() for f in FINDINGS}
    by_view: dict[str, Counter] = {}
    names = {ABSENT: "absent", PRESENT: "present", UNSPECIFIED: "unspecified"}
    for r in records:
        view = by_view.setdefault(r.view or "unknown", Counter())
        for f, c in zip(FINDINGS, r.codes):
            states[f][names[c]] += 1
            view[f] += c == PRESENT
    return {
        "images": len(records),
        "patients": len({r.patient_id for r in records if r.patient_id is not None}),
        "no_finding": sum(1 for r in records if all(c == ABSENT for c in r.codes)),
        "findings": {f: {k: states[f][k] for k in ("present", "absent", "unspecified")} for f in FINDINGS},
        "views": dict(sorted(Counter(r.view or "unknown" for r in records).items())),
        "splits": dict(sorted(Counter(r.split or "unspecified" for r in records).items())),
        "present_by_view": {v: {f: by_view[v][f] for f in FINDINGS} for v in sorted(by_view)},
    }
