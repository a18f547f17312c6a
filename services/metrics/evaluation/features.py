"""Features of an image array with a registered extractor, through the metrics feature cache (pixels hashed),
with the extractor's stamp — the one way evaluations get Inception / cxr-encoder features."""

from __future__ import annotations

import numpy as np

from services.metrics.extractors.base import ExtractorStamp


def extract_features(images: np.ndarray, extractor: str, device: str | None = None, cache: bool = True,
                     label: str = "images") -> tuple[np.ndarray, ExtractorStamp]:
    """(n, h, w) float [0, 1] → ((n, d) float32 features, stamp)."""
    from services.common.config import get_settings
    from services.metrics.cache import FeatureCache
    from services.metrics.errors import MetricsError
    from services.metrics.extractors import get_extractor
    from services.metrics.sets import load_set
    from services.metrics.sources import ArraySource

    try:
        dev = device or get_settings().resolved_device()
    except ValueError as e:
        raise MetricsError(str(e)) from None
    ex = get_extractor(extractor, device=dev)
    sd = load_set(ArraySource(np.asarray(images, np.float32), name=label), [ex],
                  cache=FeatureCache(enabled=cache), label=label)
    return sd.features[ex.name], sd.stamps[ex.name]
