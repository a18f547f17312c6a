"""Generation-time screening for near copies of the training set: the interface, the verdicts and what a
batch's manifest records.

The generation use case (``services.generator.generation``) calls a :class:`Screener` on each chunk of images
before storing it and, per the request's ``screen`` action, marks near copies (``flag``: every image stored,
``ImageRecord.near_copy`` set) or leaves them out (``drop``: their seeds recorded). The implementation over a
training-set index lives in the metrics package (``services.metrics.evaluation.screening.IndexScreener``) and is
injected by whoever builds the service (the CLI, the gateway); this module imports neither.
"""

from __future__ import annotations

from typing import Callable, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, Field

ScreenAction = Literal["off", "flag", "drop"]
SCREEN_ACTIONS: tuple[str, ...] = ("off", "flag", "drop")


class ScreeningUnavailable(Exception):
    """No screener can be had for a model (no training-set index is known for it, or screening is not set up)."""


class ScreenVerdict(BaseModel):
    """One image's verdict: near copy or not, with its distance to the nearest training image per space."""

    near_copy: bool
    distances: dict[str, float] = Field(default_factory=dict, description="space -> distance to the nearest "
                                                                          "training image")
    nearest: dict[str, str] = Field(default_factory=dict, description="space -> that training image's id")


class ScreeningRecord(BaseModel):
    """What a screened batch's manifest records: the index and thresholds used, and which seeds were near copies."""

    index: str = Field(description="name of the training-set index")
    index_sha256: str | None = Field(None, description="sha256 of the index (its description file)")
    spaces: list[str] = Field(description="feature spaces screened; an image is a near copy when any flags it")
    thresholds: dict[str, float] = Field(default_factory=dict, description="space -> distance threshold")
    quantile: float | None = Field(None, description="thresholds = this quantile of real held-out images' "
                                                     "distances to the training set")
    action: Literal["flag", "drop"]
    screened: int = Field(0, description="images screened (stored + dropped)")
    flagged_seeds: list[int] = Field(default_factory=list, description="seeds of near copies (kept when flag)")
    dropped_seeds: list[int] = Field(default_factory=list, description="seeds of near copies left out (drop)")


@runtime_checkable
class Screener(Protocol):
    def screen(self, images: np.ndarray) -> list[ScreenVerdict]:
        """A verdict per image of ``images`` ``(n, h, w)`` float32 in [0, 1], in order."""
        ...

    def record(self, action: Literal["flag", "drop"]) -> ScreeningRecord:
        """The manifest record of a batch screened with ``action`` (no seeds yet)."""
        ...


#: model id -> its screener (raises :class:`ScreeningUnavailable` when there is none)
ScreenerFactory = Callable[[str], Screener]
