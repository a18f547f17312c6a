"""Patient-disjoint splits: every image of one patient lands in the same split.

A dataset's recorded split can mix patients (the NIH 64 px subset has 15 patients in both train and valid) and
some datasets record none (the Kermany paediatric folder is one training set). ``patient_split`` assigns each
record a split from a hash of its patient id alone (salted, no RNG state), so the assignment is the same on
every machine, for every program, and does not change when images are added or removed. Records without a
patient id are their own patient (keyed by file name).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterable, Mapping

from .records import DatasetError, Record

#: split name -> fraction of patients; "test" is the held-out split every reported number uses
PATIENT_SPLITS: Mapping[str, float] = {"train": 0.8, "test": 0.2}
SALT = "synthrad-patient-split-v1"
SPLIT_BY = ("recorded", "patient")


def patient_key(record: Record) -> str:
    return record.patient_id or f"file:{record.path.name}"


def _unit(key: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(key: str, fractions: Mapping[str, float] = PATIENT_SPLITS, salt: str = SALT) -> str:
    """The split of one patient key: the hash's position in [0, 1) against the cumulative fractions."""
    u, acc = _unit(key, salt), 0.0
    names = list(fractions)
    for name in names:
        acc += fractions[name]
        if u < acc:
            return name
    return names[-1]


def patient_split(records: Iterable[Record], fractions: Mapping[str, float] = PATIENT_SPLITS,
                  salt: str = SALT) -> list[Record]:
    """``records`` with ``split`` replaced by the patient-disjoint assignment."""
    total = sum(fractions.values())
    if not fractions or abs(total - 1.0) > 1e-9 or min(fractions.values()) <= 0:
        raise DatasetError(f"split fractions must be positive and sum to 1, got {dict(fractions)}")
    return [dataclasses.replace(r, split=split_of(patient_key(r), fractions, salt)) for r in records]


def check_split_by(value: str) -> str:
    if value not in SPLIT_BY:
        raise DatasetError(f"split_by {value!r} unknown; use 'recorded' (the dataset's own split column or "
                           f"folders) or 'patient' (patient-disjoint {', '.join(PATIENT_SPLITS)})")
    return value
