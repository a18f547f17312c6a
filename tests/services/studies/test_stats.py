"""services.studies.stats: the worked example of docs/studies.md, number by number, and the edge cases."""

from __future__ import annotations

import math
import warnings

import pytest
from scipy import stats as sps

from services.metrics.evaluation.stats import wilson_interval
from services.studies.model import AnswerRow, LikertRow, Reader
from services.studies.stats import StudyResults, compute_results, estimate, fleiss_kappa, likert_summary, rates

PE_P = (("pleural_effusion", "present"),)
PE_A = (("pleural_effusion", "absent"),)
READERS = (Reader("r1", "Reader One"), Reader("r2", "Reader Two"))


def _lk(slot, source, model, state, rating):
    return LikertRow(slot=slot, image_source=source, model_id=model, finding="pleural_effusion", state=state,
                     rating=rating)


def example_rows() -> list[AnswerRow]:
    """docs/studies.md, "Worked example": 2 readers, 4 pair and 4 single cases, 2 strata, 2 sources."""
    # case: (kind, truth, source, strata)
    cases = {
        "P1": ("pair", "left", "gan", PE_P), "P2": ("pair", "right", "gan", PE_A),
        "P3": ("pair", "left", "diff", PE_P), "P4": ("pair", "right", "diff", PE_A),
        "S1": ("single", "synthetic", "gan", PE_P), "S2": ("single", "real", "gan", PE_P),
        "S3": ("single", "synthetic", "diff", PE_A), "S4": ("single", "real", "diff", PE_A),
    }
    answers = {
        "r1": {"P1": "left", "P2": "right", "P3": "right", "P4": "undecided",
               "S1": "synthetic", "S2": "synthetic", "S3": "real", "S4": "real"},
        "r2": {"P1": "left", "P2": "left", "P3": "right", "P4": "undecided",
               "S1": "synthetic", "S2": "real", "S3": "undecided", "S4": "real"},
    }
    likert = {
        ("r1", "P1"): (_lk("left", "synthetic", "gan", "present", 5), _lk("right", "real", None, "present", 4)),
        ("r2", "P1"): (_lk("left", "synthetic", "gan", "present", 4), _lk("right", "real", None, "present", 4)),
        ("r1", "S1"): (_lk("single", "synthetic", "gan", "present", 2),),
        ("r1", "P4"): (_lk("right", "synthetic", "diff", "absent", 1),),
        ("r2", "P4"): (_lk("right", "synthetic", "diff", "absent", 3),),
    }
    return [AnswerRow(reader_id=reader, case_id=case, kind=cases[case][0], choice=choice, truth=cases[case][1],
                      source=cases[case][2], strata=cases[case][3], likert=likert.get((reader, case), ()))
            for reader, per in answers.items() for case, choice in per.items()]


@pytest.fixture(scope="module")
def res() -> StudyResults:
    return compute_results(example_rows(), study_id="s1", title="example", readers=READERS)


def _group(res, kind, by, key):
    kr = next(k for k in res.kinds if k.kind == kind)
    return next(g for g in kr.groups if g.by == by and g.key == key)


def _check(est, k, n):
    assert (est.k, est.n) == (k, n)
    assert est.value == (k / n if n else None)
    assert (est.low, est.high) == wilson_interval(k, n)


def test_pair_all_rates(res):
    r = _group(res, "pair", "all", "all").rates
    assert (r.n, r.undecided, r.decided, r.correct) == (8, 2, 6, 3)
    assert r.uar.value == 2 / 8 and r.car.value == 3 / 6 and r.accuracy.value == 3 / 8
    _check(r.uar, 2, 8), _check(r.car, 3, 6), _check(r.accuracy, 3, 8)
    # pairs: TP = TN = correct, FN = FP = decided − correct, so TPR = TNR = CAR
    _check(r.tpr, 3, 6), _check(r.tnr, 3, 6)
    assert r.fir is None


def test_single_all_rates(res):
    r = _group(res, "single", "all", "all").rates
    assert (r.n, r.undecided, r.decided, r.correct) == (8, 1, 7, 5)
    assert r.uar.value == 1 / 8 and r.car.value == 5 / 7 and r.accuracy.value == 5 / 8
    assert r.tpr.value == 2 / 3 and r.tnr.value == 3 / 4 and r.fir.value == 2 / 4
    _check(r.tpr, 2, 3), _check(r.tnr, 3, 4), _check(r.fir, 2, 4)


def test_wilson_by_hand(res):
    """Accuracy 5/8 of the single cases: the Wilson interval computed from its formula (docs)."""
    acc = _group(res, "single", "all", "all").rates.accuracy
    z = sps.norm.ppf(0.975)
    n, p = 8, 5 / 8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert acc.low == pytest.approx(centre - half, abs=1e-12) and acc.high == pytest.approx(centre + half, abs=1e-12)
    assert (round(acc.low, 4), round(acc.high, 4)) == (0.3057, 0.8632)


def test_groups_and_order(res):
    pair = next(k for k in res.kinds if k.kind == "pair")
    assert [(g.by, g.key) for g in pair.groups] == [
        ("all", "all"), ("reader", "r1"), ("reader", "r2"), ("finding", "pleural_effusion:absent"),
        ("finding", "pleural_effusion:present"), ("state", "present"), ("state", "absent"),
        ("source", "diff"), ("source", "gan")]
    assert _group(res, "pair", "reader", "r1").label == "Reader One"
    assert _group(res, "pair", "finding", "pleural_effusion:present").label == "pleural effusion present"
    r1 = _group(res, "pair", "reader", "r1").rates
    assert (r1.uar.value, r1.car.value, r1.accuracy.value) == (1 / 4, 2 / 3, 2 / 4)
    r2 = _group(res, "pair", "reader", "r2").rates
    assert (r2.uar.value, r2.car.value, r2.accuracy.value) == (1 / 4, 1 / 3, 1 / 4)
    present = _group(res, "pair", "finding", "pleural_effusion:present").rates
    assert (present.n, present.undecided, present.correct, present.car.value) == (4, 0, 2, 2 / 4)
    absent = _group(res, "pair", "finding", "pleural_effusion:absent").rates
    assert (absent.uar.value, absent.car.value, absent.accuracy.value) == (2 / 4, 1 / 2, 1 / 4)
    assert _group(res, "pair", "state", "absent").rates == absent
    gan, diff = _group(res, "pair", "source", "gan").rates, _group(res, "pair", "source", "diff").rates
    assert (gan.car.value, gan.accuracy.value) == (3 / 4, 3 / 4)
    assert (diff.undecided, diff.car.value, diff.accuracy.value) == (2, 0 / 2, 0 / 4)
    s_r2 = _group(res, "single", "reader", "r2").rates
    assert (s_r2.car.value, s_r2.accuracy.value, s_r2.tpr.value, s_r2.tnr.value, s_r2.fir.value) == (
        3 / 3, 3 / 4, 1 / 1, 2 / 2, 1 / 2)
    s_gan, s_diff = _group(res, "single", "source", "gan").rates, _group(res, "single", "source", "diff").rates
    assert (s_gan.car.value, s_gan.tpr.value, s_gan.tnr.value, s_gan.fir.value) == (3 / 4, 2 / 2, 1 / 2, 2 / 2)
    assert (s_diff.car.value, s_diff.tpr.value, s_diff.tnr.value, s_diff.fir.value) == (2 / 3, 0 / 1, 2 / 2, 0 / 2)


def test_agreement_by_hand(res):
    got = {(k.kind, k.method): k for k in res.agreement}
    assert set(got) == {("pair", "cohen"), ("pair", "fleiss"), ("single", "cohen"), ("single", "fleiss")}
    # pair Cohen: p_o = 3/4, p_e = (1·2 + 2·1 + 1·1)/16 = 5/16 → (3/4 − 5/16)/(1 − 5/16) = 7/11
    assert got["pair", "cohen"].readers == ["r1", "r2"] and got["pair", "cohen"].n_cases == 4
    assert got["pair", "cohen"].kappa == pytest.approx(7 / 11, abs=1e-12)
    # single Cohen: p_o = 2/4, p_e = (2·2 + 2·1 + 0·1)/16 = 6/16 → (1/2 − 3/8)/(5/8) = 1/5
    assert got["single", "cohen"].kappa == pytest.approx(1 / 5, abs=1e-12)
    # pair Fleiss: P̄ = (1 + 0 + 1 + 1)/4 = 3/4, P_e = (3/8)² + (3/8)² + (2/8)² = 22/64 → 13/21
    assert got["pair", "fleiss"].n_cases == 4 and got["pair", "fleiss"].readers == ["r1", "r2"]
    assert got["pair", "fleiss"].kappa == pytest.approx(13 / 21, abs=1e-12)
    # single Fleiss: P̄ = (1 + 0 + 0 + 1)/4 = 1/2, P_e = (4/8)² + (3/8)² + (1/8)² = 26/64 → 3/19
    assert got["single", "fleiss"].kappa == pytest.approx(3 / 19, abs=1e-12)


def test_likert_by_hand(res):
    got = {(s.finding, s.state, s.source): s for s in res.likert}
    assert list(got) == [("pleural_effusion", "absent", "diff"), ("pleural_effusion", "present", "gan"),
                         ("pleural_effusion", "present", "real")]
    gan = got["pleural_effusion", "present", "gan"]  # ratings 5, 4, 2
    assert (gan.n, gan.mean, gan.median, gan.counts) == (3, 11 / 3, 4.0, [0, 1, 0, 1, 1])
    _check(gan.consistent, 2, 3)
    half = sps.t.ppf(0.975, 2) * math.sqrt(7 / 3) / math.sqrt(3)  # sd² = (16/9 + 1/9 + 25/9)/2 = 7/3
    assert (gan.mean_low, gan.mean_high) == (max(1.0, 11 / 3 - half), min(5.0, 11 / 3 + half)) == (1.0, 5.0)
    real = got["pleural_effusion", "present", "real"]  # 4, 4: all equal → low = high = mean
    assert (real.n, real.mean, real.mean_low, real.mean_high, real.median) == (2, 4.0, 4.0, 4.0, 4.0)
    _check(real.consistent, 2, 2)
    diff = got["pleural_effusion", "absent", "diff"]  # 1, 3 (absent: consistent when ≤ 2)
    assert (diff.mean, diff.median, diff.counts) == (2.0, 2.0, [1, 0, 1, 0, 0])
    _check(diff.consistent, 1, 2)


def test_results_header_and_json(res):
    assert (res.study_id, res.title, res.n_answers, res.n_readers) == ("s1", "example", 16, 2)
    assert [k.kind for k in res.kinds] == ["pair", "single"]
    dumped = res.model_dump(mode="json")
    assert dumped["definitions"] == "docs/studies.md"
    assert StudyResults.model_validate(dumped) == res


def test_no_answers():
    res = compute_results([])
    assert (res.n_answers, res.n_readers, res.kinds, res.agreement, res.likert) == (0, 0, [], [], [])
    r = rates([])
    assert r.n == 0 and r.uar.value is None and r.uar.low is None and r.car.value is None
    assert estimate(0, 0).model_dump() == {"value": None, "k": 0, "n": 0, "low": None, "high": None}


def test_all_undecided():
    rows = [AnswerRow(f"r{i}", f"S{j}", "single", "undecided", "synthetic" if j else "real", "gan")
            for i in range(2) for j in range(2)]
    res = compute_results(rows)
    r = res.kinds[0].groups[0].rates
    assert (r.n, r.undecided, r.decided, r.correct) == (4, 4, 0, 0)
    assert r.uar.value == 1.0 and r.car.value is None and r.car.low is None and r.accuracy.value == 0.0
    assert r.tpr.value is None and r.tnr.value is None and r.fir.value == 0 / 2
    # both readers always "undecided": p_e = 1, kappa undefined → None, never NaN
    assert [k.kappa for k in res.agreement] == [None, None]
    assert [k.n_cases for k in res.agreement] == [2, 2]


def test_single_reader_has_no_kappa():
    rows = [r for r in example_rows() if r.reader_id == "r1"]
    res = compute_results(rows)
    assert res.agreement == [] and res.n_readers == 1
    assert [g.key for g in res.kinds[0].groups if g.by == "reader"] == ["r1"]


def test_degenerate_kappa_is_none_without_warning():
    rows = [AnswerRow(r, c, "pair", "left", "left", "gan") for r in ("a", "b") for c in ("P1", "P2")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = compute_results(rows)
    assert [(k.method, k.kappa) for k in res.agreement] == [("cohen", None), ("fleiss", None)]
    assert fleiss_kappa([], ("left", "right", "undecided")) is None


def test_kappa_pairs_and_partial_overlap():
    """Three readers: Cohen per pair over the shared cases; Fleiss only over the cases all three answered."""
    rows = [AnswerRow("a", "P1", "pair", "left", "left", "gan"), AnswerRow("a", "P2", "pair", "right", "left", "gan"),
            AnswerRow("b", "P1", "pair", "left", "left", "gan"), AnswerRow("b", "P2", "pair", "left", "left", "gan"),
            AnswerRow("c", "P1", "pair", "right", "left", "gan")]
    ag = compute_results(rows).agreement
    assert [(k.method, k.readers, k.n_cases) for k in ag] == [
        ("cohen", ["a", "b"], 2), ("cohen", ["a", "c"], 1), ("cohen", ["b", "c"], 1),
        ("fleiss", ["a", "b", "c"], 1)]
    # a vs b: p_o = 1/2, p_e = (1·2 + 1·0)/4 = 1/2 → 0 ; one case only, a ≠ c: p_o = 0, p_e = 0 → 0
    assert ag[0].kappa == pytest.approx(0.0, abs=1e-12) and ag[1].kappa == pytest.approx(0.0, abs=1e-12)


def test_multiple_strata_and_unconditioned():
    two = (("pleural_effusion", "present"), ("atelectasis", "absent"))
    rows = [AnswerRow("a", "P1", "pair", "left", "left", "gan", strata=two),
            AnswerRow("a", "P2", "pair", "right", "left", "gan", strata=(("atelectasis", "present"),
                                                                        ("lung_opacity", "present"))),
            AnswerRow("a", "P3", "pair", "undecided", "left", "gan")]
    groups = {(g.by, g.key): g for g in compute_results(rows).kinds[0].groups}
    assert [k for b, k in groups if b == "finding"] == [
        "atelectasis:absent", "atelectasis:present", "lung_opacity:present", "pleural_effusion:present",
        "unconditioned"]
    assert groups["finding", "unconditioned"].rates.undecided == 1
    assert groups["finding", "lung_opacity:present"].label == "lung opacity present"
    # P2 has two "present" strata but counts once in the "present" group
    assert groups["state", "present"].rates.n == 2 and groups["state", "absent"].rates.n == 1
    assert [k for b, k in groups if b == "state"] == ["present", "absent"]


def test_likert_summary_small():
    s = likert_summary("atelectasis", "present", "real", [])
    assert s.n == 0 and s.mean is None and s.mean_low is None and s.median is None and s.counts == [0] * 5
    one = likert_summary("atelectasis", "absent", "gan", [2])
    assert (one.mean, one.mean_low, one.mean_high, one.median) == (2.0, None, None, 2.0)
    _check(one.consistent, 1, 1)
    ci = likert_summary("atelectasis", "present", "gan", [3, 4, 4, 5, 3, 4])
    m, half = 23 / 6, sps.t.ppf(0.975, 5) * sps.tstd([3, 4, 4, 5, 3, 4]) / math.sqrt(6)
    assert ci.mean == pytest.approx(m) and ci.mean_low == pytest.approx(m - half) and ci.median == 4.0
