"""Patient-disjoint splits (services/common/datasets/splits.py)."""

from pathlib import Path

import pytest

from services.common.datasets import DatasetError, load_records, patient_split
from services.common.datasets.folder import kermany_patient
from services.common.datasets.records import Record
from services.common.datasets.splits import split_of


def _recs(n_patients: int, per_patient: int = 3) -> list[Record]:
    return [Record(Path(f"p{p}_{i}.png"), (0, 0, 0, 0), "PA", f"patient{p}", "train")
            for p in range(n_patients) for i in range(per_patient)]


def test_every_image_of_a_patient_lands_in_one_split():
    out = patient_split(_recs(400))
    by_patient: dict[str, set] = {}
    for r in out:
        by_patient.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())
    test = sum(1 for s in by_patient.values() if s == {"test"})
    assert 0.14 < test / 400 < 0.26  # 20 % of patients, give or take the hash's spread


def test_assignment_depends_on_the_patient_alone():
    a = {r.patient_id: r.split for r in patient_split(_recs(50))}
    # adding, removing and reordering other patients changes nobody's split
    b = {r.patient_id: r.split for r in patient_split(list(reversed(_recs(80)))[: 3 * 70])}
    assert all(a[p] == b[p] for p in a if p in b)
    assert split_of("patient7") == split_of("patient7") and split_of("x", salt="other") in ("train", "test")


def test_records_without_patient_are_their_own_patient():
    recs = [Record(Path(f"img{i}.png"), (0, 0, 0, 0)) for i in range(200)]
    splits = {r.split for r in patient_split(recs)}
    assert splits == {"train", "test"}


def test_bad_fractions_are_refused():
    with pytest.raises(DatasetError, match="sum to 1"):
        patient_split(_recs(3), {"train": 0.9, "test": 0.2})


def test_kermany_patient_ids_from_file_names():
    assert kermany_patient("person1000_bacteria_2931.jpeg") == "person1000"
    assert kermany_patient("IM-0629-0001-0002.jpeg") == "IM-0629"
    assert kermany_patient("NORMAL2-IM-1345-0001.jpeg") == "NORMAL2-IM-1345"
    assert kermany_patient("scan.jpeg") is None


def test_shared_nih64_patient_split_is_disjoint_unlike_the_recorded_one(nih64):
    rec = load_records(nih64, "nih", views="all")
    tr = {r.patient_id for r in rec if r.split == "train"}
    va = {r.patient_id for r in rec if r.split == "valid"}
    assert tr & va  # the recorded split mixes patients (what the issue found)
    pat = load_records(nih64, "nih", views="all", split_by="patient")
    tr = {r.patient_id for r in pat if r.split == "train"}
    te = {r.patient_id for r in pat if r.split == "test"}
    assert tr and te and not tr & te and len(pat) == len(rec)
    test_only = load_records(nih64, "nih", views="all", split="test", split_by="patient")
    assert {r.patient_id for r in test_only} == te


def test_unknown_split_by_is_named(nih64):
    with pytest.raises(DatasetError, match="'recorded'.*'patient'"):
        load_records(nih64, "nih", split_by="random")
