"""``synthrad models evaluate``: conditional agreement of a registered model, from the command line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from synthrad.cli.main import cli


def test_evaluate_prints_the_agreement_table_and_writes_json(nih64, tmp_path):
    """Scored by the shipped independent classifier (nothing trained); --data: its real reference is the
    classifier on the data's patient test split (for NIH: the classifier card's own numbers)."""
    from services.metrics.evaluation.classifier import load_classifier

    out = tmp_path / "cond.json"
    r = CliRunner().invoke(cli, ["models", "evaluate", "stylegan2-cxr64", "--data", str(nih64), "--device", "cpu",
                                 "--n-per-condition", "4", "--bootstrap", "20", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "| finding | real AUC" in r.output and "| ratio |" in r.output and "enlarged_cardiac_silhouette" in r.output
    res = json.loads(out.read_text())
    assert res["n_per_condition"] == 4 and res["model_id"] == "stylegan2-cxr64"
    assert set(res["findings"]) == {"atelectasis", "lung_opacity", "pleural_effusion", "enlarged_cardiac_silhouette"}
    clf = load_classifier()
    assert res["classifier"]["weights_sha256"] == clf.weights_sha256 and res["split_by"] == "patient"
    for f, row in res["findings"].items():
        assert row["real_heldout"]["auc"] == pytest.approx(clf.real_auc(f)["auc"], abs=1e-3)
        assert (row["ratio"] is None) == (row["status"] != "ok")


def test_evaluate_without_data_uses_the_classifier_card(tmp_path):
    from services.metrics.evaluation.classifier import load_classifier

    out = tmp_path / "cond.json"
    r = CliRunner().invoke(cli, ["models", "evaluate", "stylegan2-cxr64", "--device", "cpu", "--n-per-condition", "3",
                                 "--bootstrap", "0", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["data"] is None and res["real_reference"] == "nih-chestxray14-64"
    card = load_classifier().card["nih-chestxray14-64"]
    assert {f: v["real_heldout"]["auc"] for f, v in res["findings"].items()} == {f: m["auc"] for f, m in card.items()}
    r = CliRunner().invoke(cli, ["models", "evaluate", "stylegan2-cxr64", "--device", "cpu", "--reference", "chexpert"])
    assert r.exit_code == 1 and "unknown test set" in r.output


def test_evaluate_refuses_an_unknown_model_and_a_param_it_does_not_use(nih64):
    r = CliRunner().invoke(cli, ["models", "evaluate", "no-such-model", "--data", str(nih64), "--device", "cpu"])
    assert r.exit_code == 1 and "no-such-model" in r.output
    r = CliRunner().invoke(cli, ["models", "evaluate", "stylegan2-cxr64", "--data", str(nih64), "--device", "gpu"])
    assert r.exit_code == 2 and "--device" in r.output
