"""The errors of the study layer (the gateway maps each onto its HTTP status once, in ``gateway.errors``)."""

from __future__ import annotations


class StudyError(ValueError):
    """A study request that cannot be served as asked; the message says what to do (HTTP 422)."""


class StudyNotFound(StudyError):
    """No such study, case or image (HTTP 404)."""


class StudyConflict(StudyError):
    """The request contradicts what is stored: a case already answered, an idempotency key reused (HTTP 409)."""


class StudyUnauthenticated(StudyError):
    """A missing or wrong reader token / owner key (HTTP 401)."""


class StudyBusy(StudyError):
    """The database stayed locked past its busy timeout (HTTP 503 with Retry-After: try again)."""


class StudyDamaged(StudyError):
    """A stored image whose bytes no longer match their sha256 (HTTP 500, data loss: restore the database)."""


__all__ = ["StudyBusy", "StudyConflict", "StudyDamaged", "StudyError", "StudyNotFound", "StudyUnauthenticated"]
