"""``synthrad models evaluate``: conditional agreement of a registered model, from the command line."""

from __future__ import annotations

import json

from click.testing import CliRunner

from synthrad.cli.main import cli


def test_evaluate_prints_the_agreement_table_and_writes_json(nih64, tmp_path):
    out = tmp_path / "cond.json"
    r = CliRunner().invoke(cli, ["models", "evaluate", "stylegan2-cxr64", "--data", str(nih64), "--device", "cpu",
                                 "--n-per-condition", "4", "--epochs", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "| finding | real AUC" in r.output and "enlarged_cardiac_silhouette" in r.output
    res = json.loads(out.read_text())
    assert res["n_per_condition"] == 4 and res["model_id"] == "stylegan2-cxr64"
    assert set(res["findings"]) == {"atelectasis", "lung_opacity", "pleural_effusion", "enlarged_cardiac_silhouette"}


def test_evaluate_refuses_an_unknown_model_and_a_param_it_does_not_use(nih64):
    r = CliRunner().invoke(cli, ["models", "evaluate", "no-such-model", "--data", str(nih64), "--device", "cpu"])
    assert r.exit_code == 1 and "no-such-model" in r.output
    r = CliRunner().invoke(cli, ["models", "evaluate", "stylegan2-cxr64", "--data", str(nih64), "--device", "gpu"])
    assert r.exit_code == 2 and "--device" in r.output
