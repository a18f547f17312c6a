"""Transport-neutral API errors: each carries its HTTP status and its gRPC status code.

The gateway core raises these; ``rest.py`` turns them into JSON error responses and ``grpc_api.py`` into gRPC
statuses. Errors of the shared layers (conditions, prompts, models, store) are mapped by :func:`api_error`.
"""

from __future__ import annotations

import grpc


class ApiError(Exception):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "invalid_argument"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ApiError):
    http_status = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "invalid_argument"


class BadId(ApiError):
    """A malformed id (batch, job, file name): never touches the store (path traversal guard)."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "bad_id"


class NotFound(ApiError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    kind = "not_found"


class TooLarge(ApiError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = "too_large"


class TooManyJobs(ApiError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = "too_many_jobs"


class NotReady(ApiError):
    """A job result asked for before the job finished."""

    http_status = 409
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    kind = "not_ready"


class Unauthenticated(ApiError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    kind = "unauthenticated"


class Unavailable(ApiError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    kind = "unavailable"


class Internal(ApiError):
    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    kind = "internal"


def api_error(exc: BaseException) -> ApiError:
    """Map an exception of the shared layers onto an :class:`ApiError` (unknown ones -> Internal)."""
    if isinstance(exc, ApiError):
        return exc
    # Exceptions raised inside a Ray replica arrive as RayTaskError (which also subclasses the original type
    # when it can, but its message carries the remote traceback): judge and report the original.
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return api_error(cause)
    from services.common.findings import ConditionError
    from services.common.store import BatchNotFound, InvalidBatchId
    from services.generator.base import GeneratorError
    from services.generator.registry import UnknownModel

    if isinstance(exc, InvalidBatchId):
        return BadId(str(exc))
    if isinstance(exc, BatchNotFound):
        return NotFound(str(exc))
    if isinstance(exc, (UnknownModel, ConditionError, GeneratorError)):
        return InvalidArgument(str(exc))
    return Internal(f"{type(exc).__name__}: {exc}")
