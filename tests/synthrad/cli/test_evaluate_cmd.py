"""``synthrad evaluate``: kinds as sub-commands with flags from their options; a fresh set from --model; results
as table, JSON and HTML; efficiency."""

from __future__ import annotations

import json

from click.testing import CliRunner

from synthrad.cli.main import cli


def test_help_lists_every_kind_and_flags_come_from_the_options_model():
    r = CliRunner().invoke(cli, ["evaluate", "--help"])
    assert r.exit_code == 0
    for kind in ("conditioning", "utility", "memorisation", "bias", "per-finding", "efficiency"):
        assert kind in r.output
    r = CliRunner().invoke(cli, ["evaluate", "bias", "--help"])
    assert r.exit_code == 0 and "--crop-border" in r.output and "--batch" in r.output
    r = CliRunner().invoke(cli, ["evaluate", "utility", "--model", "stylegan2-cxr64"])
    assert r.exit_code != 0 and "needs --data" in r.output
    r = CliRunner().invoke(cli, ["evaluate", "bias"])
    assert r.exit_code != 0 and "--batch ID" in r.output


def test_a_fresh_set_from_a_model_is_stored_evaluated_and_reported(tmp_path):
    store = tmp_path / "store"
    out, html = tmp_path / "r.json", tmp_path / "r.html"
    r = CliRunner().invoke(cli, ["evaluate", "conditioning", "--model", "stylegan2-cxr64", "--n", "3",
                                 "--store", str(store), "--no-progress", "--json", str(out), "--report", str(html),
                                 "--bootstrap", "50"])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["kind"] == "conditioning" and res["subject"]["n"] == 24  # 4 findings x present/absent x 3
    assert res["subject"]["model_id"] == "stylegan2-cxr64"
    assert res["provenance"]["options"]["bootstrap"] == 50
    assert len([p for p in store.iterdir() if (p / "manifest.json").exists()]) == 8  # marked, stored batches
    assert "Conditional agreement" in r.output and "<table>" in html.read_text()
    ids = [p.name for p in store.iterdir()]
    again = CliRunner().invoke(cli, ["evaluate", "conditioning", *sum((["--batch", i] for i in ids), []),
                                     "--store", str(store), "--no-progress", "--json", str(out),
                                     "--bootstrap", "50"])
    assert again.exit_code == 0, again.output
    assert json.loads(out.read_text())["headline"] == res["headline"]  # the same images, the same numbers


def test_unknown_batch_is_a_clean_error(tmp_path):
    r = CliRunner().invoke(cli, ["evaluate", "bias", "--batch", "20261127t015959-0123456789ab",
                                 "--store", str(tmp_path), "--no-progress"])
    assert r.exit_code == 1 and "not found" in r.output and "Traceback" not in r.output


def test_efficiency_table_and_json(tmp_path):
    out = tmp_path / "eff.json"
    r = CliRunner().invoke(cli, ["evaluate", "efficiency", "--model", "stylegan2-cxr64", "--backends", "eager",
                                 "--device", "cpu", "--images", "8", "--threads", "1", "--no-progress",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    ok = [x for x in rep["results"] if x["status"] == "ok"]
    assert ok and ok[0]["backend"] == "eager" and ok[0]["peak_memory_mb"] > 0 and ok[0]["extrapolated"]
    assert "peak MB (8 images)" in r.output
