"""Evaluation "conditioning": generated AUC next to the independent classifier's real AUC, with known answers —
real held-out images requested with their own labels reproduce the real AUC (ratio 1), shuffled requests give
chance, and a classifier at chance on real images (a stub) is flagged instead of scored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from repo_paths import SHARED_DATA

from services.common.findings import FINDINGS
from services.metrics import conditioning as legacy
from services.metrics.errors import MetricsError
from services.metrics.evaluation import conditioning as C
from services.metrics.evaluation import evaluate
from services.metrics.evaluation.classifier import model as M
from services.metrics.evaluation.inputs import DataSpec, SyntheticSet, load_real
from services.metrics.evaluation.registry import get_evaluation, parse_options

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NIH = SHARED_DATA / "nih-chestxray14-64"
NIH_SET = "nih-chestxray14-64"
QUICK = {"bootstrap": 30, "figure": False}


@pytest.fixture(scope="module")
def nih_test():
    return load_real(DataSpec(path=str(NIH), layout="nih", split_by="patient"), 64, splits=("test",))


@pytest.fixture(scope="module")
def real_run(nih_test):
    """Real held-out images "requested" with their real labels: the batch a perfect generator would make."""
    syn = SyntheticSet(nih_test.test_images, nih_test.test_codes, description="NIH patient test split")
    return evaluate("conditioning", syn, {"bootstrap": 50})


@pytest.fixture(scope="module")
def probs(nih_test):
    return M.load_classifier().predict(nih_test.test_images)


class _Brightness(torch.nn.Module):
    """A stand-in network: every finding's logit is 20 × (mean intensity − 0.5)."""

    def forward(self, x):
        return (20 * (x.mean(dim=(1, 2, 3)) - 0.5))[:, None].repeat(1, len(FINDINGS))


def _stub(real_auc: dict[str, tuple[float, float, float]]) -> M.CXRClassifier:
    card = {f: {"auc": a, "ci_low": lo, "ci_high": hi, "ci_level": 0.95, "n_pos": 30, "n_neg": 100}
            for f, (a, lo, hi) in real_auc.items()}
    meta = {"arch": "stub", "thresholds": {f: 0.5 for f in FINDINGS}, "heldout": {"stub-set": {"n": 130,
            "findings": card}}, "reference": {f: "stub-set" for f in FINDINGS}, "split_rule": "stub"}
    return M.CXRClassifier(_Brightness(), meta, "0" * 64)


def _bright_dark(codes: np.ndarray) -> SyntheticSet:
    """Images bright where any finding is asked present, dark otherwise (a generator that obeys perfectly as
    far as the brightness stub can tell)."""
    codes = np.asarray(codes, np.int8)
    level = np.where((codes == 1).any(1), 0.8, 0.2) + np.linspace(-0.05, 0.05, len(codes))
    return SyntheticSet(np.ones((len(codes), 16, 16), np.float32) * level[:, None, None], codes)


def test_real_images_with_their_labels_reproduce_the_real_auc(real_run, nih_test):
    clf = M.load_classifier()
    rows = real_run.details["findings"]
    for f in FINDINGS:
        card = clf.real_auc(f)
        r = rows[f]
        assert r["generated"]["auc"] == pytest.approx(card["auc"], abs=1e-3), f
        assert (r["n_present"], r["n_absent"]) == (card["n_pos"], card["n_neg"])
        assert r["real"]["test_set"] == NIH_SET and r["usable"] == card["better_than_chance"]
        if r["usable"]:
            assert r["ratio"] == pytest.approx(1.0, abs=5e-3)
            lo, hi = r["generated"]["ci_low"], r["generated"]["ci_high"]
            assert lo < r["generated"]["auc"] < hi
        else:
            assert r["ratio"] is None and r["status"] == C.CHANCE
            assert any(w.startswith(f"{f}: not scored") for w in real_run.warnings)
    usable = [f for f in FINDINGS if rows[f]["usable"]]
    h = real_run.headline
    assert h["usable_findings"] == len(usable) and h["n_images"] == len(nih_test.test_images)
    assert (h["mean_ratio"] is None) if not usable else h["mean_ratio"] == pytest.approx(1.0, abs=5e-3)
    assert h["refused"] == (not usable)


def test_shuffled_requests_give_chance_agreement(nih_test, probs):
    clf = M.load_classifier()
    refs = C.references(clf, "auto")
    rng = np.random.default_rng(0)
    opts = C.ConditioningOptions(bootstrap=0)
    aucs = np.array([[C.per_finding(probs, nih_test.test_codes[rng.permutation(len(probs))], clf.thresholds, refs,
                                    opts)[f]["generated"]["auc"] for f in FINDINGS] for _ in range(30)])
    assert np.abs(aucs.mean(0) - 0.5).max() < 0.05  # chance, whatever the classifier
    true = C.per_finding(probs, nih_test.test_codes, clf.thresholds, refs, opts)
    for j, f in enumerate(FINDINGS):
        if clf.real_auc(f)["better_than_chance"]:  # a usable finding: the true labels beat most shuffles
            assert (aucs[:, j] >= true[f]["generated"]["auc"]).mean() < 0.25, f


def test_a_classifier_at_chance_on_real_images_is_flagged(monkeypatch):
    stub = _stub({"atelectasis": (0.80, 0.70, 0.88), "lung_opacity": (0.55, 0.45, 0.65),
                  "pleural_effusion": (0.52, 0.50, 0.60), "enlarged_cardiac_silhouette": (0.75, 0.6, 0.85)})
    monkeypatch.setattr("services.metrics.evaluation.classifier.load_classifier", lambda: stub)
    codes = np.full((40, 4), 2, np.int8)
    for j in range(3):
        codes[:, j] = np.tile([1, 0], 20)
    res = evaluate("conditioning", _bright_dark(codes), QUICK)
    rows = res.details["findings"]
    assert rows["atelectasis"]["generated"]["auc"] == 1.0 and rows["atelectasis"]["ratio"] == pytest.approx(1 / 0.8)
    for f in ("lung_opacity", "pleural_effusion"):  # CI lower bound ≤ 0.5: shown, not scored
        assert rows[f]["generated"]["auc"] == 1.0 and rows[f]["ratio"] is None and rows[f]["status"] == C.CHANCE
    assert rows["enlarged_cardiac_silhouette"]["status"] == C.NO_PAIR  # never requested: no warning
    assert sum("not scored" in w for w in res.warnings) == 2
    assert res.headline["usable_findings"] == 1 and res.headline["mean_ratio"] == pytest.approx(1.25)
    assert res.headline["flagged"] == "lung_opacity, pleural_effusion" and not res.headline["refused"]
    every = _stub({f: (0.5, 0.4, 0.6) for f in FINDINGS})
    monkeypatch.setattr("services.metrics.evaluation.classifier.load_classifier", lambda: every)
    res = evaluate("conditioning", _bright_dark(codes), QUICK)
    assert res.headline["refused"] and res.headline["mean_ratio"] is None and res.headline["usable_findings"] == 0
    assert res.warnings[0].startswith("no finding could be scored")


def test_missing_groups_are_flagged_and_unspecified_findings_not_scored(monkeypatch):
    stub = _stub({f: (0.8, 0.7, 0.9) for f in FINDINGS})
    monkeypatch.setattr("services.metrics.evaluation.classifier.load_classifier", lambda: stub)
    codes = np.full((6, 4), 2, np.int8)
    codes[:, 0] = 1  # atelectasis: present only
    codes[:3, 1], codes[3, 1] = 1, 0  # lung opacity: 3 present, 1 absent < min_group 2
    res = evaluate("conditioning", _bright_dark(codes), {**QUICK, "seed": 3})
    rows = res.details["findings"]
    assert rows["atelectasis"]["status"] == rows["lung_opacity"]["status"] == C.NO_PAIR
    assert rows["atelectasis"]["mean_p_present"] > 0.99 and rows["atelectasis"]["mean_p_absent"] is None
    assert len([w for w in res.warnings if "asked absent" in w]) == 2 and res.headline["refused"]
    img = res.details["per_image"][3]
    assert set(img["requested"]) == {"atelectasis", "lung_opacity"} == set(img["p"])
    # bright (the stub's "present") for atelectasis, so lung opacity asked absent disagrees
    assert img["requested"]["lung_opacity"] == "absent" and img["agrees"] == {"atelectasis": True,
                                                                              "lung_opacity": False}
    assert res.provenance.seeds == [3] and res.provenance.set_sizes["synthetic"] == 6


def test_options_are_described_validated_and_registered():
    ev = get_evaluation("conditioning")
    assert ev.options is C.ConditioningOptions and not ev.needs_data
    assert all(f.description for f in C.ConditioningOptions.model_fields.values())
    with pytest.raises(MetricsError, match="bootstrap"):
        parse_options("conditioning", {"bootstrap": -1})
    with pytest.raises(MetricsError, match="min_group"):
        parse_options("conditioning", {"min_group": 0})
    with pytest.raises(MetricsError, match="unknown test set"):
        C.references(M.load_classifier(), "chexpert")
    k = C.references(M.load_classifier(), "kermany-pneumonia-224")
    assert k["lung_opacity"]["test_set"] == "kermany-pneumonia-224" and k["atelectasis"] is None


def test_result_is_json_with_tables_figure_and_provenance(real_run):
    clf = M.load_classifier()
    back = json.loads(real_run.model_dump_json())
    assert back["kind"] == "conditioning" and back["provenance"]["classifier"]["weights_sha256"] == clf.weights_sha256
    assert back["provenance"]["set_sizes"] == {"synthetic": 160, f"real_test:{NIH_SET}": 160}
    assert len(back["details"]["per_image"]) == 160 and real_run.figures and real_run.figures[0].png_base64
    text = real_run.markdown()
    assert "| atelectasis |" in text and "generated AUC" in text and "real AUC" in text


class _FakeGenerator:
    """Obeys perfectly for the brightness stub: bright when any finding is present."""

    model_id, backend = "fake", "eager"

    def generate(self, conditions, seeds, params=None):
        codes = np.stack([c.codes() for c in conditions])
        return _bright_dark(codes).images


def test_models_evaluate_backend_scores_with_the_shipped_classifier(monkeypatch):
    stub = _stub({f: (0.8, 0.7, 0.9) for f in FINDINGS[:3]} | {FINDINGS[3]: (0.55, 0.45, 0.65)})
    res = legacy.evaluate_conditioning(_FakeGenerator(), n_per_condition=5, classifier=stub, bootstrap=50,
                                       epochs=3)
    assert res["n_per_condition"] == 5 and res["real_reference"] == "stub-set" and res["split_by"] == "patient"
    for f in FINDINGS[:3]:
        r = res["findings"][f]
        assert r["generated"]["auc"] == 1.0 and r["generated"]["accuracy"] == 1.0
        assert r["ratio"] == pytest.approx(1.25) and r["real_heldout"]["auc"] == 0.8
    assert res["findings"][FINDINGS[3]]["ratio"] is None and res["findings"][FINDINGS[3]]["status"] == C.CHANCE
    table = legacy.format_table(res)
    assert "| atelectasis | 0.800 | n/a | 1.000 | 1.000 | 1.00 / 0.00 | 1.250 |" in table
    assert f"| {FINDINGS[3]} |" in table and "n/a (classifier at chance" in table
    json.dumps(res)


def test_models_evaluate_backend_takes_its_real_reference_from_data(nih_test):
    """With ``data``: the shipped classifier on its patient test split — for NIH, the card's own numbers."""
    clf = M.load_classifier()
    res = legacy.evaluate_conditioning(_FakeGenerator(), str(NIH), "nih", None, n_per_condition=3, bootstrap=30)
    assert res["n_valid"] == len(nih_test.test_images) and res["layout"] == "nih"
    for f in FINDINGS:
        assert res["findings"][f]["real_heldout"]["auc"] == pytest.approx(clf.real_auc(f)["auc"], abs=1e-3)
        assert res["findings"][f]["real_heldout"]["n_pos"] == clf.real_auc(f)["n_pos"]
