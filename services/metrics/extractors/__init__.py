"""Feature-extractor registry.

``get_extractor(name, **options)`` builds (and memoises per options) an extractor; ``register_extractor(name,
factory)`` adds one (tests register tiny fakes). Built in:

* ``inception`` — FID Inception-V3 pool3 (2048-d), pytorch-fid architecture and preprocessing; the only
  extractor whose Fréchet distance is reported as ``FID`` (the rule: ``services/metrics/naming.py``).
* ``cxr-encoder`` — a small chest-X-ray CNN trained here on the labelled real data (NIH ChestX-ray14 64 px +
  Kermany paediatric pneumonia), 128-d embedding; its Fréchet distance is reported as ``FD_cxr-encoder``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from services.metrics.errors import MetricsError
from services.metrics.extractors.base import ExtractorStamp, FeatureExtractor

Factory = Callable[..., FeatureExtractor]

_FACTORIES: dict[str, Factory] = {}
_INSTANCES: dict[tuple, FeatureExtractor] = {}
_LOCK = threading.Lock()


def register_extractor(name: str, factory: Factory, replace: bool = False) -> None:
    if name in _FACTORIES and not replace:
        raise MetricsError(f"extractor {name!r} already registered")
    _FACTORIES[name] = factory
    for key in [k for k in _INSTANCES if k[0] == name]:
        del _INSTANCES[key]


def unregister_extractor(name: str) -> None:
    _FACTORIES.pop(name, None)
    for key in [k for k in _INSTANCES if k[0] == name]:
        del _INSTANCES[key]


def available_extractors() -> list[str]:
    return sorted(_FACTORIES)


def get_extractor(name: str, **options: Any) -> FeatureExtractor:
    """The extractor ``name`` built with ``options`` (``weights``, ``device``, ``dtype``…); memoised."""
    if name not in _FACTORIES:
        raise MetricsError(f"unknown extractor {name!r}; available: {', '.join(available_extractors())}")
    opts = {k: (str(v) if v is not None and not isinstance(v, (bool, int, float, str)) else v) for k, v in options.items()}
    key = (name, tuple(sorted(opts.items())))
    with _LOCK:
        ex = _INSTANCES.get(key)
        if ex is None:
            ex = _FACTORIES[name](**{k: v for k, v in options.items() if v is not None})
            _INSTANCES[key] = ex
    return ex


def _inception(**kw: Any) -> FeatureExtractor:
    from services.metrics.extractors.inception import InceptionExtractor

    return InceptionExtractor(**kw)


def _cxr(**kw: Any) -> FeatureExtractor:
    from services.metrics.extractors.cxr import CXREncoderExtractor

    return CXREncoderExtractor(**kw)


register_extractor("inception", _inception)
register_extractor("cxr-encoder", _cxr)

__all__ = [
    "ExtractorStamp",
    "FeatureExtractor",
    "available_extractors",
    "get_extractor",
    "register_extractor",
    "unregister_extractor",
]
