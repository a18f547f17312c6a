"""The statistics of a reader study: UAR, CAR, accuracy, TPR, TNR, FIR with 95 % Wilson intervals, Cohen's and
Fleiss' kappa, Likert summaries — pure functions over :class:`~services.studies.model.AnswerRow`.

Every definition is written out, with a worked example that the tests reproduce, in docs/studies.md. All counts
are integers and every rate is exactly ``k / n``; every proportion's CI is
:func:`services.metrics.evaluation.stats.wilson_interval` (95 %).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import defaultdict
from itertools import combinations
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
from pydantic import BaseModel

from services.common.findings import HUMAN_NAMES
from services.metrics.evaluation.stats import wilson_interval
from services.studies.model import CHOICES, LIKERT_LEVELS, REAL, UNDECIDED, AnswerRow, Reader

KINDS: tuple[str, ...] = ("pair", "single")
UNCONDITIONED = "unconditioned"
SYNTHETIC = "synthetic"


class Estimate(BaseModel):
    """A proportion ``k / n`` (None when n = 0) with its 95 % Wilson interval."""

    value: float | None
    k: int
    n: int
    low: float | None
    high: float | None


class Rates(BaseModel):
    n: int
    undecided: int
    decided: int
    correct: int
    uar: Estimate
    car: Estimate
    accuracy: Estimate
    tpr: Estimate
    tnr: Estimate
    fir: Estimate | None  # single cases only


class GroupRates(BaseModel):
    by: Literal["all", "reader", "finding", "state", "source"]
    key: str
    label: str
    rates: Rates


class KindResults(BaseModel):
    kind: Literal["pair", "single"]
    groups: list[GroupRates]


class Kappa(BaseModel):
    kind: Literal["pair", "single"]
    method: Literal["cohen", "fleiss"]
    readers: list[str]
    n_cases: int
    kappa: float | None


class LikertSummary(BaseModel):
    finding: str
    state: str
    source: str
    n: int
    mean: float | None
    mean_low: float | None
    mean_high: float | None
    median: float | None
    counts: list[int]  # ratings 1..5
    consistent: Estimate  # rating >= 4 when the state is present, <= 2 when absent


class StudyResults(BaseModel):
    study_id: str
    title: str
    n_answers: int
    n_readers: int
    kinds: list[KindResults]
    agreement: list[Kappa]
    likert: list[LikertSummary]
    definitions: str = "docs/studies.md"


# ----------------------------------------------------------------------------------------------- proportions


def estimate(k: int, n: int) -> Estimate:
    """``k / n`` with the 95 % Wilson interval; value, low and high are None for n = 0."""
    low, high = wilson_interval(int(k), int(n))
    return Estimate(value=(k / n) if n else None, k=int(k), n=int(n), low=low, high=high)


def rates(rows: Sequence[AnswerRow]) -> Rates:
    """The rates of one group of answers of one kind (docs/studies.md, "Measures")."""
    rows = list(rows)
    kinds = {r.kind for r in rows}
    if len(kinds) > 1:
        raise ValueError(f"rates() needs answers of one kind, got {sorted(kinds)}")
    n = len(rows)
    undecided = sum(1 for r in rows if r.choice == UNDECIDED)
    decided = n - undecided
    correct = sum(1 for r in rows if r.choice != UNDECIDED and r.choice == r.truth)
    if kinds == {"single"}:
        tp = sum(1 for r in rows if r.truth == SYNTHETIC and r.choice == SYNTHETIC)
        fn = sum(1 for r in rows if r.truth == SYNTHETIC and r.choice == REAL)
        tn = sum(1 for r in rows if r.truth == REAL and r.choice == REAL)
        fp = sum(1 for r in rows if r.truth == REAL and r.choice == SYNTHETIC)
        synthetic_answers = sum(1 for r in rows if r.truth == SYNTHETIC)
        tpr, tnr, fir = estimate(tp, tp + fn), estimate(tn, tn + fp), estimate(tp, synthetic_answers)
    else:  # a decided pair answer names one image synthetic and the other real: TP = TN = correct
        tpr, tnr, fir = estimate(correct, decided), estimate(correct, decided), None
    return Rates(n=n, undecided=undecided, decided=decided, correct=correct, uar=estimate(undecided, n),
                 car=estimate(correct, decided), accuracy=estimate(correct, n), tpr=tpr, tnr=tnr, fir=fir)


# ------------------------------------------------------------------------------------------------------ groups


def rows_by_kind(rows: Iterable[AnswerRow]) -> dict[str, list[AnswerRow]]:
    """The answers per case kind, in the order of :data:`KINDS`; kinds without answers are left out."""
    out: dict[str, list[AnswerRow]] = {k: [] for k in KINDS}
    for r in rows:
        if r.kind not in out:
            raise ValueError(f"unknown case kind {r.kind!r}")
        out[r.kind].append(r)
    return {k: v for k, v in out.items() if v}


def finding_key(finding: str, state: str) -> str:
    return f"{finding}:{state}"


def finding_label(key: str) -> str:
    if key == UNCONDITIONED:
        return UNCONDITIONED
    finding, _, state = key.partition(":")
    return f"{HUMAN_NAMES.get(finding, finding)} {state}"


def _finding_keys(r: AnswerRow) -> list[str]:
    return sorted({finding_key(f, s) for f, s in r.strata}) or [UNCONDITIONED]


def _state_keys(r: AnswerRow) -> list[str]:
    return sorted({s for _, s in r.strata})


def _state_order(key: str) -> tuple:
    return ({"present": 0, "absent": 1}.get(key, 2), key)


def _group(rows: Sequence[AnswerRow], keys: Callable[[AnswerRow], Iterable[str]]) -> dict[str, list[AnswerRow]]:
    out: dict[str, list[AnswerRow]] = defaultdict(list)
    for r in rows:
        for key in keys(r):
            out[key].append(r)
    return out


def group_rates(rows: Sequence[AnswerRow], readers: Sequence[Reader] = ()) -> list[GroupRates]:
    """The rates of one kind's answers: all, per reader, per (finding, state), per state, per source."""
    names = {r.id: r.name for r in readers}
    out = [GroupRates(by="all", key="all", label="all", rates=rates(rows))]
    by_reader = _group(rows, lambda r: [r.reader_id])
    out += [GroupRates(by="reader", key=k, label=names.get(k, k), rates=rates(by_reader[k]))
            for k in sorted(by_reader)]
    by_finding = _group(rows, _finding_keys)
    out += [GroupRates(by="finding", key=k, label=finding_label(k), rates=rates(by_finding[k]))
            for k in sorted(by_finding, key=lambda k: (k == UNCONDITIONED, k))]
    by_state = _group(rows, _state_keys)
    out += [GroupRates(by="state", key=k, label=k, rates=rates(by_state[k]))
            for k in sorted(by_state, key=_state_order)]
    by_source = _group(rows, lambda r: [r.source])
    out += [GroupRates(by="source", key=k, label=k, rates=rates(by_source[k])) for k in sorted(by_source)]
    return out


# --------------------------------------------------------------------------------------------------- agreement


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def cohen_kappa(a: Sequence[str], b: Sequence[str], labels: Sequence[str]) -> float | None:
    """``sklearn.metrics.cohen_kappa_score``; None where it is undefined (no cases, p_e = 1) instead of NaN."""
    from sklearn.metrics import cohen_kappa_score

    if len(a) == 0:
        return None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return _finite(cohen_kappa_score(list(a), list(b), labels=list(labels)))
        except (ValueError, ZeroDivisionError):
            return None


def fleiss_kappa(ratings: Sequence[Sequence[str]], labels: Sequence[str]) -> float | None:
    """Fleiss' kappa (``statsmodels.stats.inter_rater``) of cases × raters labels; None where undefined."""
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss

    if len(ratings) == 0 or len(ratings[0]) < 2:
        return None
    index = {c: i for i, c in enumerate(labels)}
    data = np.array([[index[c] for c in case] for case in ratings], dtype=int)
    table, _ = aggregate_raters(data, n_cat=len(labels))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return _finite(sm_fleiss(table, method="fleiss"))
        except (ValueError, ZeroDivisionError):
            return None


def agreement(kind: str, rows: Sequence[AnswerRow]) -> list[Kappa]:
    """Cohen's kappa of every pair of readers over the cases both answered, then Fleiss' kappa over the cases
    every reader answered (when ≥ 2 readers). A reader's later answer to a case replaces an earlier one."""
    labels = CHOICES[kind]
    answers: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows:
        answers[r.reader_id][r.case_id] = r.choice
    readers = sorted(answers)
    out: list[Kappa] = []
    for a, b in combinations(readers, 2):
        cases = sorted(answers[a].keys() & answers[b].keys())
        out.append(Kappa(kind=kind, method="cohen", readers=[a, b], n_cases=len(cases),
                         kappa=cohen_kappa([answers[a][c] for c in cases], [answers[b][c] for c in cases], labels)))
    if len(readers) >= 2:
        cases = sorted(set.intersection(*(set(answers[x]) for x in readers)))
        out.append(Kappa(kind=kind, method="fleiss", readers=readers, n_cases=len(cases),
                         kappa=fleiss_kappa([[answers[x][c] for x in readers] for c in cases], labels)))
    return out


# ------------------------------------------------------------------------------------------------------ Likert


def likert_source(image_source: str, model_id: str | None) -> str:
    return REAL if image_source == REAL else (model_id or SYNTHETIC)


def likert_summary(finding: str, state: str, source: str, ratings: Sequence[int]) -> LikertSummary:
    """Mean with its t 95 % interval (None for n < 2; clipped to the scale 1..5), median, counts of 1..5, and
    the share of ratings consistent with the state (≥ 4 when present, ≤ 2 when absent)."""
    from scipy import stats

    n = len(ratings)
    mean = statistics.fmean(ratings) if n else None
    low = high = None
    if n >= 2:
        sd = statistics.stdev(ratings)
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if sd > 0 else 0.0
        lo, hi = min(LIKERT_LEVELS), max(LIKERT_LEVELS)
        low, high = max(lo, mean - half), min(hi, mean + half)
    if state == "present":
        k = sum(1 for x in ratings if x >= 4)
    elif state == "absent":
        k = sum(1 for x in ratings if x <= 2)
    else:
        k = 0
    return LikertSummary(finding=finding, state=state, source=source, n=n, mean=mean, mean_low=low,
                         mean_high=high, median=float(statistics.median(ratings)) if n else None,
                         counts=[sum(1 for x in ratings if x == level) for level in LIKERT_LEVELS],
                         consistent=estimate(k, n))


def likert_summaries(rows: Sequence[AnswerRow]) -> list[LikertSummary]:
    """One summary per (finding, state, source) over every Likert rating of every answer, sorted by that key."""
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for r in rows:
        for q in r.likert:
            groups[(q.finding, q.state, likert_source(q.image_source, q.model_id))].append(int(q.rating))
    return [likert_summary(f, s, src, groups[(f, s, src)]) for f, s, src in sorted(groups)]


# ------------------------------------------------------------------------------------------------- entry point


def compute_results(rows: Sequence[AnswerRow], study_id: str = "", title: str = "",
                    readers: Sequence[Reader] = ()) -> StudyResults:
    """Every number of a study's results (``model_dump(mode="json")`` for the API and the owner page).
    ``n_readers`` counts the readers with at least one answer."""
    rows = list(rows)
    by_kind = rows_by_kind(rows)
    return StudyResults(
        study_id=study_id, title=title, n_answers=len(rows), n_readers=len({r.reader_id for r in rows}),
        kinds=[KindResults(kind=k, groups=group_rates(v, readers)) for k, v in by_kind.items()],
        agreement=[kappa for k, v in by_kind.items() for kappa in agreement(k, v)],
        likert=likert_summaries(rows))


__all__ = ["Estimate", "GroupRates", "Kappa", "KindResults", "LikertSummary", "Rates", "StudyResults",
           "agreement", "cohen_kappa", "compute_results", "estimate", "finding_label", "fleiss_kappa",
           "group_rates", "likert_summaries", "likert_summary", "rates", "rows_by_kind"]
