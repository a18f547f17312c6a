"""How extractor-based scores are named — the one place that says when a score may be called FID or KID.

A Fréchet distance is ``FID`` and a kernel distance ``KID`` only when made with the standard ``inception``
extractor (the FID Inception-V3 weights); with any other extractor they are ``FD_<extractor>`` and
``KID_<extractor>``, so a number from another network is never mistaken for an FID.
"""

from __future__ import annotations

from services.metrics import defaults

STANDARD_EXTRACTOR = defaults.EXTRACTOR
# measure → (name with the standard extractor, prefix with any other)
_NAMES = {"fid": ("FID", "FD"), "kid": ("KID", "KID")}


def score_name(measure: str, extractor: str) -> str:
    """``score_name("fid", "inception") == "FID"``, ``score_name("fid", "cxr-encoder") == "FD_cxr-encoder"``."""
    standard, prefix = _NAMES[measure]
    return standard if extractor == STANDARD_EXTRACTOR else f"{prefix}_{extractor}"
