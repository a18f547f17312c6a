"""What :func:`services.metrics.api.score` returns: a JSON-able :class:`ScoreResult` of :class:`Score` entries."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, PrivateAttr

VERSION = "synthrad-metrics/1"


class SetInfo(BaseModel):
    description: str
    kind: str
    n: int
    content_hash: str | None = None
    image_shape: list[int] | None = None
    classes: dict[str, int] | None = None
    computed_images: int = Field(0, description="images pushed through an extractor in this call (0 = cached/reference)")


class Score(BaseModel):
    metric: str = Field(description="the measure that made it: fid | kid | ipr | prdc | svm | variety")
    name: str = Field(description="display name: FID only for the inception extractor (else FD_<extractor>)")
    value: float | None = Field(description="None when undefined for these sets (NaN), e.g. after a JSON round trip")
    std: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    extractor: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class ScoreResult(BaseModel):
    version: str = VERSION
    created: str
    real: SetInfo
    synthetic: SetInfo
    metrics: list[str]
    extractor: str | None
    stamps: dict[str, dict[str, Any]] = Field(default_factory=dict, description="extractor stamps by name")
    scores: list[Score] = Field(default_factory=list)
    spatial: list[dict[str, Any]] | None = None
    spatial_omitted: dict[str, str] | None = Field(
        None, description="spatial features left out of the comparison (undefined for these sets) → reason")
    separability: dict[str, Any] | None = None
    variety: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)

    # the loaded sets (services.metrics.sets.SetData), for the HTML report; not serialised
    _real: Any = PrivateAttr(default=None)
    _synthetic: Any = PrivateAttr(default=None)

    def get(self, name: str) -> Score:
        """The first score called ``name`` or made by the measure ``name``."""
        for s in self.scores:
            if s.name == name or s.metric == name:
                return s
        raise KeyError(name)

    def values(self) -> dict[str, float]:
        return {s.name: s.value for s in self.scores}

    def to_json(self, **kw: Any) -> str:
        return self.model_dump_json(indent=kw.pop("indent", 2), **kw)
