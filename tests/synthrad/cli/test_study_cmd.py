"""``synthrad study``: create (links, secrets file), list, add-reader, results (table, JSON, report), export."""

from __future__ import annotations

import json
import os
import stat

from click.testing import CliRunner

from services.studies.service import StudyService
from study_data import make_batches, make_real_folder
from synthrad.cli.main import cli


def test_create_answer_and_read_results_from_the_command_line(tmp_path):
    url, ids = make_batches(tmp_path / "store", n=4)
    real = make_real_folder(tmp_path / "real", n_each=4)
    db, secrets = tmp_path / "s.db", tmp_path / "secrets.json"
    args = ["study", "create", "--batch", ids[0], "--batch", ids[1], "--real", str(real), "--store", url,
            "--db", str(db), "--id", "pilot", "--reader", "ann", "--reader", "bob", "--per-batch", "2",
            "--mode", "pair", "--mode", "single", "--likert", "--secrets-out", str(secrets), "--quiet",
            "--url", "http://127.0.0.1:8000"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "study pilot: 12 cases (pair, single)" in r.output
    assert "reader ann: http://127.0.0.1:8000/study/#token=pilot.r." in r.output
    doc = json.loads(secrets.read_text())
    assert stat.S_IMODE(os.stat(secrets).st_mode) == 0o600 and doc["owner_key"].startswith("pilot.o.")
    assert not list(tmp_path.glob(".*.tmp"))
    assert doc["owner_key"] in r.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "exists already" in again.output

    svc = StudyService(db)
    for name in ("ann", "bob"):
        reader = svc.authenticate_reader("pilot", doc["readers"][name])
        while (v := svc.case_at("pilot", reader)) is not None:
            svc.answer("pilot", reader, v.case_id, v.choices[v.position % 3],
                       [{"slot": q.slot, "finding": q.finding, "rating": 1 + v.position % 5} for q in v.likert],
                       f"{name}-{v.position:06d}")
    r = CliRunner().invoke(cli, ["study", "list", "--db", str(db)])
    assert r.exit_code == 0 and "pilot" in r.output and "ann 12/12" in r.output
    r = CliRunner().invoke(cli, ["study", "results", "pilot", "--db", str(db), "--report", str(tmp_path / "r.html"),
                                 "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    for words in ("pair cases", "single cases", "UAR", "CAR", "agreement", "cohen", "Likert"):
        assert words in r.output
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["n_answers"] == 24 and "<table" in (tmp_path / "r.html").read_text()
    r = CliRunner().invoke(cli, ["study", "results", "pilot", "--db", str(db), "--json", "-"])
    assert json.loads(r.output) == res
    r = CliRunner().invoke(cli, ["study", "export", "pilot", "--db", str(db), "--out", str(tmp_path / "a.csv")])
    assert r.exit_code == 0 and len((tmp_path / "a.csv").read_text().splitlines()) == 25
    r = CliRunner().invoke(cli, ["study", "add-reader", "pilot", "cy", "--db", str(db), "--url", "http://h:1"])
    assert r.exit_code == 0 and "reader cy (r3): http://h:1/study/#token=pilot.r." in r.output


def test_errors_say_what_to_do(tmp_path):
    url, ids = make_batches(tmp_path / "store", n=2)
    real = make_real_folder(tmp_path / "real", n_each=1)
    r = CliRunner().invoke(cli, ["study", "create", "--batch", ids[0], "--real", str(real), "--store", url,
                                 "--db", str(tmp_path / "s.db"), "--per-batch", "2", "--quiet"])
    assert r.exit_code != 0 and "not enough real images" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["study", "create", "--batch", "20990101t000000-000000000000", "--real", str(real),
                                 "--store", url, "--db", str(tmp_path / "s.db"), "--quiet"])
    assert r.exit_code != 0 and "not found" in r.output
    r = CliRunner().invoke(cli, ["study", "results", "nope", "--db", str(tmp_path / "s.db")])
    assert r.exit_code != 0 and "no studies here yet" in r.output
    r = CliRunner().invoke(cli, ["study", "--help"])
    assert r.exit_code == 0 and "synthrad study create" in r.output and "docs/studies.md" in r.output


def test_a_configured_dataset_is_named_not_pathed(tmp_path, monkeypatch):
    url, ids = make_batches(tmp_path / "store", n=2)
    real = make_real_folder(tmp_path / "real", n_each=2)
    monkeypatch.setenv("SYNTHRAD_DATASETS", json.dumps({"nih-local": {"path": str(real), "layout": "nih"}}))
    db = tmp_path / "s.db"
    r = CliRunner().invoke(cli, ["study", "create", "--batch", ids[0], "--batch", ids[1], "--real", "nih-local",
                                 "--store", url, "--db", str(db), "--per-batch", "2", "--id", "named", "--quiet"])
    assert r.exit_code == 0, r.output
    doc = json.loads(StudyService(db).export("named", "json"))
    origins = {im["origin"] for c in doc["cases"] for im in c["images"].values() if im["source"] == "real"}
    assert origins and all(o.startswith("nih-local/") for o in origins)  # the name, not the server's folder
    assert str(tmp_path) not in json.dumps(doc)
