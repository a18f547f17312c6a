"""Errors of the metrics core. Every user-facing failure is a ``MetricsError`` with a clear message."""

from __future__ import annotations


class MetricsError(ValueError):
    """Invalid scoring request: missing weights, too few images, unreadable image, unknown reference…"""


class InputNotFound(MetricsError):
    """A set to score does not exist: no such batch, reference, folder or file."""
