""":class:`IndexScreener`: generation-time near-copy screening over a training-set index (the
:class:`services.common.screening.Screener` the generation use case is given).

An image is a near copy when, in any of the screened spaces, its distance to the nearest training image is at
most the ``quantile`` of the real held-out images' distances (the memorisation evaluation's threshold). The
default space is ``pixel`` (a random projection of the 64×64 image: a few milliseconds per image on a CPU, and a
near-identical copy is near in pixels); ``cxr-encoder`` is cheap too; ``inception`` costs about as much as
generating the image on a CPU.
"""

from __future__ import annotations

import threading
from typing import Literal, Sequence

import numpy as np

from services.common.screening import ScreeningRecord, ScreeningUnavailable, ScreenVerdict
from services.metrics.errors import MetricsError
from services.metrics.evaluation.indexes import SPACES, TrainingIndex, load_index, resolve_index
from services.metrics.evaluation.indexes.neighbours import nearest

DEFAULT_SPACES = ("pixel",)
DEFAULT_QUANTILE = 0.01


class IndexScreener:
    def __init__(self, index: TrainingIndex | str, spaces: Sequence[str] = DEFAULT_SPACES,
                 quantile: float = DEFAULT_QUANTILE):
        self.index = load_index(index) if isinstance(index, str) else index
        bad = [s for s in spaces if s not in SPACES]
        if bad or not spaces:
            raise MetricsError(f"screening spaces must be some of {', '.join(SPACES)}; got {', '.join(spaces) or 'none'}")
        if not 0.0 < float(quantile) < 0.5:
            raise MetricsError(f"screening quantile must be in (0, 0.5), got {quantile}")
        self.spaces = [s for s in SPACES if s in spaces]
        self.quantile = float(quantile)
        for s in self.spaces:
            self.index.check_featurizer(s)
        self.thresholds = {s: self.index.space(s).threshold(self.quantile) for s in self.spaces}
        self._ids = self.index.train_ids

    @classmethod
    def for_model(cls, model_id: str, spaces: Sequence[str] = DEFAULT_SPACES, quantile: float = DEFAULT_QUANTILE,
                  index: str | None = None) -> "IndexScreener":
        """The screener of a model's training set (``index`` overrides the descriptor's); ScreeningUnavailable
        when no index is known for it."""
        try:
            return cls(resolve_index(index, model_id), spaces, quantile)
        except MetricsError as e:
            raise ScreeningUnavailable(str(e)) from None

    def record(self, action: Literal["flag", "drop"]) -> ScreeningRecord:
        return ScreeningRecord(index=self.index.name, index_sha256=self.index.sha256, spaces=list(self.spaces),
                               thresholds=dict(self.thresholds), quantile=self.quantile, action=action)

    def screen(self, images: np.ndarray) -> list[ScreenVerdict]:
        x = np.asarray(images, dtype=np.float32)
        if len(x) == 0:
            return []
        per = {}
        for s in self.spaces:
            d, j = nearest(self.index.featurize(s, x), self.index.space(s).train)
            per[s] = (d, j)
        out = []
        for i in range(len(x)):
            dist = {s: float(per[s][0][i]) for s in self.spaces}
            near = {s: (self._ids[int(per[s][1][i])] if self._ids else str(int(per[s][1][i]))) for s in self.spaces}
            out.append(ScreenVerdict(near_copy=any(dist[s] <= self.thresholds[s] for s in self.spaces),
                                     distances=dist, nearest=near))
        return out


def screener_factory(spaces: Sequence[str] = DEFAULT_SPACES, quantile: float = DEFAULT_QUANTILE,
                     index: str | None = None):
    """A :data:`services.common.screening.ScreenerFactory`: model id → its IndexScreener (built once per model)."""
    cache: dict[str, IndexScreener] = {}
    lock = threading.Lock()

    def make(model_id: str) -> IndexScreener:
        with lock:
            if model_id not in cache:
                cache[model_id] = IndexScreener.for_model(model_id, spaces, quantile, index)
            return cache[model_id]

    return make
