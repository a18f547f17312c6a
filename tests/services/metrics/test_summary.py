"""ScoreSummary: the scoring job's result survives its JSON round trip to the gateway, NaN scores included."""

from __future__ import annotations

import asyncio
import json

from services.metrics.result import Score, ScoreResult, SetInfo
from services.metrics.summary import ScoreSummary


def _summary(value: float) -> ScoreSummary:
    res = ScoreResult(created="2026-12-01T00:00:00Z", real=SetInfo(description="ref", kind="reference", n=200),
                      synthetic=SetInfo(description="batch", kind="batch", n=3), metrics=["kid"],
                      extractor="inception", stamps={"inception": {"name": "inception", "weights_sha256": "ab" * 32}},
                      scores=[Score(metric="kid", name="KID", value=value, std=0.1)])
    return ScoreSummary.from_result(res, "20261201t000000-0123456789ab", "nih-cxr64", 1.5)


def test_a_nan_score_is_left_out_and_the_summary_validates_back():
    data = json.loads(json.dumps(_summary(float("nan")).model_dump(mode="json")))  # strict JSON: no NaN
    assert data["scores"] == [{"name": "KID", "metric": "kid", "std": 0.1}]
    back = ScoreSummary.model_validate(data)
    assert back.scores[0].value is None and back.result.scores[0].value is None
    assert back.extractor.weights_sha256 == "ab" * 32 and back.n_real == 200 and back.n_synthetic == 3


def test_the_gateway_scorer_returns_the_typed_summary():
    from services.gateway.clients import LocalScorer

    class Replica:
        def score(self, batch_id, reference, metrics, extractor):
            return _summary(0.25).model_dump(mode="json")

    got = asyncio.run(LocalScorer(Replica()).score("b", "nih-cxr64", ["kid"], "inception"))
    assert isinstance(got, ScoreSummary) and got.scores[0].value == 0.25 and got.result.real.n == 200
