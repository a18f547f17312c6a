"""The result of a scoring job as the serving layer returns it: :class:`ScoreSummary`.

``ScoreSummary.model_dump(mode="json")`` is the job result the gateway stores and REST / gRPC users read::

    {"batch_id", "reference", "metrics", "extractor": {name, weights_sha256, preprocessing, dtype, arch, dims,
     weights_file_sha256, weights_source, key}, "scores": [{name, metric, value, std?, ci_low?, ci_high?,
     ci_level?, extractor?}], "n_real", "n_synthetic", "warnings", "seconds", "result": {ScoreResult}}

Score entries leave out the fields they do not have (``std`` only for KID, CIs only with a bootstrap, no
``value`` for a NaN); a NaN anywhere else is ``null``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from services.metrics.result import ScoreResult


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


class ExtractorInfo(BaseModel):
    """The stamp of the extractor that made the features (``ExtractorStamp.to_dict()``); empty when no measure
    used one."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    weights_sha256: str | None = None
    preprocessing: dict[str, Any] | None = None
    dtype: str | None = None

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler):
        data = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set or k in (self.model_extra or {})}


class ScoreEntry(BaseModel):
    name: str
    metric: str | None = None
    value: float | None = None  # left out (None) for a NaN
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    extractor: str | None = None

    @model_serializer(mode="wrap")
    def _without_none(self, handler):
        return {k: v for k, v in _nan_to_none(handler(self)).items() if v is not None}


class ScoreSummary(BaseModel):
    batch_id: str
    reference: str
    metrics: list[str]
    extractor: ExtractorInfo = Field(default_factory=ExtractorInfo)
    scores: list[ScoreEntry] = Field(default_factory=list)
    n_real: int
    n_synthetic: int
    warnings: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    #: the full result (sets, stamps, tables); absent only for summaries made without the metrics core
    result: ScoreResult | None = None

    @model_serializer(mode="wrap")
    def _json_safe(self, handler):
        return _nan_to_none(handler(self))

    @classmethod
    def from_result(cls, result: ScoreResult, batch_id: str, reference: str, seconds: float) -> "ScoreSummary":
        stamp = result.stamps.get(result.extractor) if result.extractor else None
        extractor = ExtractorInfo(**stamp) if stamp else (
            ExtractorInfo(name=result.extractor) if result.extractor else ExtractorInfo())
        return cls(
            batch_id=batch_id, reference=reference, metrics=result.metrics, extractor=extractor,
            scores=[ScoreEntry(**s.model_dump(include=set(ScoreEntry.model_fields))) for s in result.scores],
            n_real=result.real.n, n_synthetic=result.synthetic.n, warnings=result.warnings,
            seconds=round(seconds, 3), result=result,
        )
