"""Answers: one transaction each, idempotent, in order, revisable only when allowed; access; export; damage."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.studies.design import StudyPlan
from services.studies.errors import StudyConflict, StudyDamaged, StudyError, StudyNotFound, StudyUnauthenticated
from services.studies.service import StudyService, create_study


@pytest.fixture
def study(tmp_path, study_inputs):
    url, ids, real = study_inputs

    def make(**kw):
        plan = StudyPlan(**{**dict(batches=ids, real_path=str(real), per_batch=2, readers=["ann", "bob"], seed=2,
                                   study_id="s1"), **kw})
        made = create_study(plan, tmp_path / "s.db", store_url=url)
        svc = StudyService(tmp_path / "s.db")
        return svc, made, {n: svc.authenticate_reader(plan.study_id, t) for n, t in made.reader_tokens.items()}
    return make


def _likert(view, rating=4):
    return [{"slot": q.slot, "finding": q.finding, "rating": rating} for q in view.likert]


def test_an_answer_is_stored_once_whatever_the_client_repeats(study, tmp_path):
    svc, made, r = study()
    view = svc.case_at("s1", r["ann"])
    first = svc.answer("s1", r["ann"], view.case_id, "left", [], "key-00000001")
    assert first == {"answered": 1, "total": 4, "done": False, "replayed": False}
    assert svc.answer("s1", r["ann"], view.case_id, "left", [], "key-00000001")["replayed"]  # a retry
    with pytest.raises(StudyConflict, match="does not allow changing"):  # a second tab, a new key
        svc.answer("s1", r["ann"], view.case_id, "right", [], "key-00000002")
    with pytest.raises(StudyConflict, match="another case"):
        svc.answer("s1", r["ann"], svc.case_at("s1", r["ann"]).case_id, "left", [], "key-00000001")
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM answer_log").fetchone()[0] == 1
    assert svc.case_at("s1", r["ann"]).position == 1 and svc.case_at("s1", r["bob"]).position == 0


def test_concurrent_double_submissions_store_one_answer(study, tmp_path):
    svc, made, r = study()
    case = svc.case_at("s1", r["ann"]).case_id

    def submit(i):
        try:
            return svc.answer("s1", r["ann"], case, "undecided", [], "same-key-1" if i % 2 else f"other-key-{i}")
        except StudyConflict:
            return "conflict"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(submit, range(16)))
    assert sum(1 for x in results if isinstance(x, dict) and not x["replayed"]) == 1
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 1


def test_cases_are_answered_in_order_without_going_back(study):
    svc, made, r = study()
    views = []
    for i in range(4):
        v = svc.case_at("s1", r["ann"])
        views.append(v)
        if i == 0:  # the next position is not reachable before this one is answered
            with pytest.raises(StudyConflict, match="answer in order"):
                svc.case_at("s1", r["ann"], 1)
        svc.answer("s1", r["ann"], v.case_id, "right", [], f"k-{i:08d}")
    assert svc.case_at("s1", r["ann"]) is None  # done
    with pytest.raises(StudyConflict, match="does not allow going back"):
        svc.case_at("s1", r["ann"], 0)
    with pytest.raises(StudyNotFound):
        svc.case_at("s1", r["ann"], 4)
    assert sorted(v.case_id for v in views) == sorted(row.case_id for row in svc.answer_rows("s1"))


def test_revising_when_the_study_allows_it(study, tmp_path):
    svc, made, r = study(allow_revise=True, likert=True)
    v = svc.case_at("s1", r["ann"])
    svc.answer("s1", r["ann"], v.case_id, "left", _likert(v, 2), "k-00000001")
    again = svc.case_at("s1", r["ann"], 0)
    assert again.answer == {"choice": "left", "likert": _likert(v, 2)}
    ack = svc.answer("s1", r["ann"], v.case_id, "undecided", _likert(v, 5), "k-00000002")
    assert ack["answered"] == 1 and not ack["replayed"]
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT choice, revision FROM answers").fetchall() == [("undecided", 1)]
    assert [x[0] for x in conn.execute("SELECT choice FROM answer_log ORDER BY seq")] == ["left", "undecided"]


def test_bad_answers_name_the_problem(study):
    svc, made, r = study(likert=True)
    v = svc.case_at("s1", r["ann"])
    with pytest.raises(StudyError, match="not an answer to a pair case"):
        svc.answer("s1", r["ann"], v.case_id, "synthetic", _likert(v), "k-00000001")
    with pytest.raises(StudyError, match="missing: right/pleural_effusion"):
        svc.answer("s1", r["ann"], v.case_id, "left", _likert(v)[:1], "k-00000001")
    with pytest.raises(StudyError, match="integer 1-5"):
        svc.answer("s1", r["ann"], v.case_id, "left", [{**_likert(v)[0], "rating": 6}, _likert(v)[1]], "k-00000001")
    with pytest.raises(StudyError, match="no Likert question"):
        svc.answer("s1", r["ann"], v.case_id, "left", _likert(v) + [{"slot": "left", "finding": "atelectasis",
                                                                     "rating": 3}], "k-00000001")
    with pytest.raises(StudyError, match="idempotency_key"):
        svc.answer("s1", r["ann"], v.case_id, "left", _likert(v), "short")
    with pytest.raises(StudyNotFound):
        svc.answer("s1", r["ann"], "c0000000000000000", "left", [], "k-00000001")


def test_tokens_open_only_their_study_and_role(study, tmp_path, study_inputs):
    svc, made, r = study()
    with pytest.raises(StudyUnauthenticated):
        svc.authenticate_reader("s1", made.owner_key)
    with pytest.raises(StudyUnauthenticated):
        svc.authenticate_owner("s1", made.reader_tokens["ann"])
    with pytest.raises(StudyUnauthenticated):
        svc.authenticate_reader("s1", made.reader_tokens["ann"][:-2] + "xx")
    svc.authenticate_owner("s1", made.owner_key)
    other, _, _ = study(study_id="s2")
    with pytest.raises(StudyUnauthenticated):
        svc.authenticate_reader("s2", made.reader_tokens["ann"].replace("s1.", "s2.", 1))
    # images of another study are not reachable with this study's token
    conn = sqlite3.connect(tmp_path / "s.db")
    foreign = conn.execute("SELECT id FROM images WHERE study_id = 's2' LIMIT 1").fetchone()[0]
    with pytest.raises(StudyNotFound):
        svc.image("s1", r["ann"], foreign)
    # a read never creates a database
    missing = StudyService(tmp_path / "none.db")
    with pytest.raises(StudyUnauthenticated):
        missing.authenticate_reader("s1", made.reader_tokens["ann"])
    assert not (tmp_path / "none.db").exists() and missing.list_studies() == []


def test_a_damaged_image_is_reported_not_served(study, tmp_path):
    svc, made, r = study()
    v = svc.case_at("s1", r["ann"])
    assert svc.image("s1", r["ann"], v.images[0].image_id)[:4] == b"\x89PNG"
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("UPDATE images SET png = ? WHERE id = ?", (b"\x89PNG broken", v.images[0].image_id))
    conn.commit()
    with pytest.raises(StudyDamaged, match="sha256"):
        svc.image("s1", r["ann"], v.images[0].image_id)


def test_export_joins_answers_with_the_answer_key(study):
    svc, made, r = study(modes=["pair", "single"], per_batch=1)
    for name in ("ann", "bob"):
        while (v := svc.case_at("s1", r[name])) is not None:
            choice = "left" if v.kind == "pair" else "synthetic"
            svc.answer("s1", r[name], v.case_id, choice, [], f"{name}-{v.position:06d}")
    rows = list(csv.DictReader(io.StringIO(svc.export("s1", "csv").decode())))
    assert len(rows) == 12 and {x["reader_name"] for x in rows} == {"ann", "bob"}
    for x in rows:
        assert x["correct"] == str(int(x["choice"] == x["truth"]))
    doc = json.loads(svc.export("s1", "json"))
    assert len(doc["answers"]) == 12 and len(doc["cases"]) == 6
    assert "token" not in json.dumps(doc["study"]) and made.owner_key not in json.dumps(doc)
    res = svc.results("s1")
    pair_all = next(g for k in res.kinds if k.kind == "pair" for g in k.groups if g.by == "all")
    truths = [x["truth"] for x in rows if x["kind"] == "pair"]
    assert pair_all.rates.correct == truths.count("left") and pair_all.rates.n == 4
    with pytest.raises(StudyError, match="use csv or json"):
        svc.export("s1", "xml")


def test_a_late_retry_after_a_revision_does_not_undo_it(study, tmp_path):
    svc, made, r = study(allow_revise=True)
    v = svc.case_at("s1", r["ann"])
    svc.answer("s1", r["ann"], v.case_id, "left", [], "key-A-000001")
    svc.answer("s1", r["ann"], v.case_id, "right", [], "key-B-000001")  # the reader changed their mind
    assert svc.answer("s1", r["ann"], v.case_id, "left", [], "key-A-000001")["replayed"]  # the late retry of A
    with pytest.raises(StudyConflict, match="different answer"):
        svc.answer("s1", r["ann"], v.case_id, "undecided", [], "key-A-000001")
    assert svc.answer("s1", r["ann"], v.case_id, "right", [], "key-C-000001")["replayed"]  # unchanged: a no-op
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("SELECT choice, revision FROM answers").fetchall() == [("right", 1)]
    assert conn.execute("SELECT COUNT(*) FROM answer_log").fetchone()[0] == 2


def test_every_reader_sees_the_pairs_first_then_the_single_images(study):
    svc, made, r = study(modes=["pair", "single"], per_batch=1)
    for reader in r.values():
        kinds = []
        while (v := svc.case_at("s1", reader)) is not None:
            kinds.append(v.kind)
            svc.answer("s1", reader, v.case_id, "undecided", [], f"{reader.id}-{v.position:06d}")
        assert kinds == ["pair"] * 2 + ["single"] * 4


def test_a_tampered_answer_key_is_detected(study, tmp_path):
    svc, made, r = study()
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("UPDATE cases SET truth = CASE truth WHEN 'left' THEN 'right' ELSE 'left' END WHERE ordinal = 0")
    conn.commit()
    with pytest.raises(StudyDamaged, match="answer key of study s1 does not match"):
        svc.results("s1")
    with pytest.raises(StudyDamaged):
        svc.export("s1", "csv")


def test_a_busy_database_is_a_retryable_error(study, tmp_path):
    from services.gateway.errors import api_error
    from services.studies.database import StudyDB
    from services.studies.errors import StudyBusy

    svc, made, r = study()
    slow = StudyService(StudyDB(tmp_path / "s.db"))
    holder = sqlite3.connect(tmp_path / "s.db", timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        import services.studies.database as database
        orig = database.StudyDB._connect

        def quick(self):
            conn = orig(self)
            conn.execute("PRAGMA busy_timeout = 50")
            return conn
        database.StudyDB._connect = quick
        try:
            with pytest.raises(StudyBusy) as e:
                slow.answer("s1", r["ann"], slow.case_at("s1", r["ann"]).case_id, "left", [], "busy-key-01")
        finally:
            database.StudyDB._connect = orig
    finally:
        holder.execute("ROLLBACK")
    err = api_error(e.value)
    assert err.http_status == 503 and err.headers()["Retry-After"] == "1"


def test_csv_cells_cannot_start_a_formula(study):
    svc, made, r = study()
    rdr, token = svc.add_reader("s1", "=HYPERLINK(\"x\")")
    v = svc.case_at("s1", rdr)
    svc.answer("s1", rdr, v.case_id, "left", [], "formula-0001")
    rows = list(csv.DictReader(io.StringIO(svc.export("s1", "csv").decode())))
    assert {x["reader_name"] for x in rows} == {"'=HYPERLINK(\"x\")"}


def test_duplicate_batches_and_other_views_are_refused_or_left_out(tmp_path, study_inputs):
    url, ids, real = study_inputs
    with pytest.raises(ValueError, match="given twice"):
        StudyPlan(batches=[ids[0], ids[0]], real_path=str(real))
    # an AP image in the real folder is never used while views are PA (the default)
    lines = (real / "labels.csv").read_text().splitlines()
    lines = [lines[0]] + [x.replace(",PA", ",AP") if i % 2 else x for i, x in enumerate(lines[1:])]
    (real / "labels.csv").write_text("\n".join(lines) + "\n")
    plan = StudyPlan(batches=ids, real_path=str(real), per_batch=2, readers=["ann"], study_id="pa")
    create_study(plan, tmp_path / "v.db", store_url=url)
    ap = {x.split(",")[0] for x in lines[1:] if x.endswith(",AP")}
    doc = json.loads(StudyService(tmp_path / "v.db").export("pa", "json"))
    used = {im["origin"].split("/", 1)[1] for c in doc["cases"] for im in c["images"].values() if im["source"] == "real"}
    assert used and not used & ap
    with pytest.raises(StudyError, match="not enough real images"):
        create_study(plan.model_copy(update={"study_id": "pa2", "per_batch": 5}), tmp_path / "v.db", store_url=url)
    create_study(plan.model_copy(update={"study_id": "all", "per_batch": 5, "real_views": None}), tmp_path / "v.db",
                 store_url=url)
