"""A tiny, deterministic feature extractor for metrics tests (registered under a name per test module, so
feature caches of different modules never collide)."""

from __future__ import annotations

import numpy as np
import pytest

from services.metrics.extractors.base import ExtractorStamp, FeatureExtractor


def counting_extractor_class(name: str, batch_size: int = 8) -> type[FeatureExtractor]:
    """16-d features: 4×4 block means of the greyscale image; ``.calls`` counts images processed."""

    class CountingExtractor(FeatureExtractor):
        dims = 16
        default_batch_size = batch_size
        calls = 0

        def __init__(self, **_):
            self.stamp = ExtractorStamp(name, "4x4 block means", 16, weights_sha256=f"{name}-v1", weights_source="test",
                                        preprocessing={"size": 4}, dtype="float32")

        def extract_batch(self, images):
            type(self).calls += len(images)
            out = []
            for im in images:
                g = im.mean(2) if im.ndim == 3 else im
                h, w = (g.shape[0] // 4) * 4, (g.shape[1] // 4) * 4
                out.append(g[:h, :w].reshape(4, h // 4, 4, w // 4).mean((1, 3)).ravel())
            return np.stack(out).astype(np.float32)

    CountingExtractor.name = name
    return CountingExtractor


def registered_counting_extractor(name: str, batch_size: int = 8):
    """``(CountingExtractor, fixture)``: the class, and an autouse fixture that registers it under ``name`` for
    each test (calls reset) and unregisters it after. A test module assigns both at module level."""
    from services.metrics.extractors import register_extractor, unregister_extractor

    cls = counting_extractor_class(name, batch_size)

    @pytest.fixture(autouse=True)
    def registered():
        register_extractor(name, lambda **kw: cls(**kw), replace=True)
        cls.calls = 0
        yield cls
        unregister_extractor(name)

    return cls, registered
