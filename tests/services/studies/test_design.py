"""Study design: matched strata, randomised sides, disjoint modes, seeded reproducibility, de-identification."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from PIL import Image
import io

from services.studies.design import StudyPlan
from study_data import make_real_folder
from services.studies.errors import StudyConflict, StudyError
from services.studies.images import ALLOWED_CHUNKS, png_chunks
from services.studies.service import StudyService, create_study


def _plan(ids, real, **kw) -> StudyPlan:
    base = dict(batches=ids, real_path=str(real), per_batch=3, readers=["ann", "bob"], seed=5, study_id="s1")
    return StudyPlan(**{**base, **kw})


def _export(db, study="s1") -> dict:
    return json.loads(StudyService(db).export(study, "json"))


def test_pairs_are_matched_by_finding_and_state_with_random_sides(tmp_path, study_inputs):
    url, ids, real = study_inputs
    made = create_study(_plan(ids, real, per_batch=6), tmp_path / "s.db", store_url=url)
    assert made.info.n_cases == 12 and made.info.image_size == 32
    doc = _export(tmp_path / "s.db")
    sides = []
    for case in doc["cases"]:
        imgs = case["images"]
        synth = imgs[case["truth"]]
        other = imgs["right" if case["truth"] == "left" else "left"]
        assert synth["source"] == "synthetic" and other["source"] == "real"
        state = synth["condition"]["pleural_effusion"]
        assert case["strata"] == [["pleural_effusion", state]]
        assert other["condition"]["pleural_effusion"] == state  # the real image shows the same state
        assert case["source"] == synth["model_id"] == ("model-a" if state == "present" else "model-b")
        sides.append(case["truth"])
    assert set(sides) == {"left", "right"}
    origins = [im["origin"] for c in doc["cases"] for im in c["images"].values()]
    assert len(origins) == len(set(origins))  # no image twice


def test_single_mode_and_both_modes_use_disjoint_images(tmp_path, study_inputs):
    url, ids, real = study_inputs
    create_study(_plan(ids, real, modes=["pair", "single"], per_batch=2, likert=True), tmp_path / "s.db", store_url=url)
    doc = _export(tmp_path / "s.db")
    pairs = [c for c in doc["cases"] if c["kind"] == "pair"]
    singles = [c for c in doc["cases"] if c["kind"] == "single"]
    assert len(pairs) == 4 and len(singles) == 8
    assert sorted(c["truth"] for c in singles) == ["real"] * 4 + ["synthetic"] * 4
    origins = [im["origin"] for c in doc["cases"] for im in c["images"].values()]
    assert len(origins) == len(set(origins))
    for c in pairs:
        assert [(q["slot"], q["finding"]) for q in c["likert"]] == [("left", "pleural_effusion"),
                                                                    ("right", "pleural_effusion")]
    for c in singles:
        assert [q["slot"] for q in c["likert"]] == ["single"]
        assert c["likert"][0]["text"] == "Is pleural effusion present?"


def test_the_same_seed_gives_the_same_design(tmp_path, study_inputs):
    url, ids, real = study_inputs
    a = create_study(_plan(ids, real, study_id="a"), tmp_path / "s.db", store_url=url)
    b = create_study(_plan(ids, real, study_id="b"), tmp_path / "s.db", store_url=url)
    c = create_study(_plan(ids, real, study_id="c", seed=6), tmp_path / "s.db", store_url=url)
    assert a.design_sha256 == b.design_sha256 != c.design_sha256
    da, db_ = _export(tmp_path / "s.db", "a"), _export(tmp_path / "s.db", "b")
    strip = lambda d: [(x["truth"], sorted((s, i["origin"]) for s, i in x["images"].items())) for x in d["cases"]]
    assert strip(da) == strip(db_)
    # each reader has its own seeded order of the same cases, equal across the two studies
    conn = sqlite3.connect(tmp_path / "s.db")
    order = lambda sid, rid: [r[0] for r in conn.execute(
        "SELECT c.ordinal FROM reader_cases rc JOIN cases c ON c.id = rc.case_id WHERE rc.study_id = ? AND "
        "rc.reader_id = ? ORDER BY rc.position", (sid, rid))]
    assert order("a", "r1") == order("b", "r1") and order("a", "r2") == order("b", "r2")
    assert order("a", "r1") != order("a", "r2") and sorted(order("a", "r1")) == list(range(6))


def test_images_are_deidentified(tmp_path, study_inputs):
    url, ids, real = study_inputs
    made = create_study(_plan(ids, real, modes=["pair", "single"], per_batch=2), tmp_path / "s.db", store_url=url)
    svc = StudyService(tmp_path / "s.db")
    conn = sqlite3.connect(tmp_path / "s.db")
    blobs = [bytes(r[0]) for r in conn.execute("SELECT png FROM images")]
    assert len(blobs) == 16
    for data in blobs:
        assert set(png_chunks(data)) <= set(ALLOWED_CHUNKS)  # no text, time, gamma, pHYs, ICC chunk
        im = Image.open(io.BytesIO(data))
        assert im.mode == "L" and im.size == (32, 32) and not im.info  # real (48 px) and synthetic alike
    # what a reader receives names neither the source nor the origin
    reader = svc.authenticate_reader("s1", made.reader_tokens["ann"])
    view = svc.case_at("s1", reader)
    text = json.dumps([view.case_id, [i.image_id for i in view.images], [q.text for q in view.likert],
                       view.kind, view.answer])
    for leak in ("model-a", "model-b", "batch", ".png", "real", "synthetic", "truth"):
        assert leak not in text


def test_refusals_name_the_problem(tmp_path, study_inputs):
    url, ids, real = study_inputs
    small = make_real_folder(tmp_path / "small", n_each=2)
    with pytest.raises(StudyError, match="not enough real images for stratum 'pleural effusion present': the real set "
                                         "has 2"):
        create_study(_plan(ids, small, per_batch=3), tmp_path / "s.db", store_url=url)
    with pytest.raises(StudyError, match="has 6 images"):
        create_study(_plan(ids, real, per_batch=7), tmp_path / "s.db", store_url=url)
    # nothing half-stored: the failed study's id is free
    create_study(_plan(ids, real), tmp_path / "s.db", store_url=url)
    with pytest.raises(StudyConflict, match="exists already"):
        create_study(_plan(ids, real), tmp_path / "s.db", store_url=url)
    with pytest.raises(ValueError):
        _plan(ids, real, study_id="Bad Id")
    with pytest.raises(ValueError, match="unique"):
        _plan(ids, real, readers=["ann", "ann"])


def test_a_failure_while_storing_leaves_nothing(tmp_path, study_inputs):
    url, ids, real = study_inputs
    create_study(_plan(ids, real, study_id="first", per_batch=1), tmp_path / "s.db", store_url=url)
    conn = sqlite3.connect(tmp_path / "s.db")
    before = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
    victim = sorted((real / "img").glob("*effusion.png"))[-1]
    victim.write_bytes(b"not a png")  # listed in labels.csv, unreadable when its pixels are read
    with pytest.raises(Exception, match="not a readable PNG"):
        create_study(_plan(ids, real, per_batch=6, seed=1), tmp_path / "s.db", store_url=url)
    assert {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES} == before
    assert conn.execute("SELECT id FROM studies").fetchall() == [("first",)]


TABLES = ("studies", "images", "cases", "case_images", "readers", "reader_cases")
