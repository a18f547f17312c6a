"""Transport-neutral API errors: each carries its HTTP status and its gRPC status code.

The gateway core raises these; ``rest.py`` turns them into JSON error responses (:meth:`ApiError.body`, the
``ErrorBody`` schema) and ``grpc_api.py`` into gRPC statuses. Errors of the shared layers (conditions, prompts,
models, store, metrics) are mapped by :func:`api_error`.

Nothing internal reaches a client: an exception that is not one of ours becomes :class:`Internal` with a
generic message and a short error id; the full exception (traceback included) is logged server-side under the
same id (:func:`internal_error`). Messages of the shared layers are scrubbed of filesystem paths, URLs and
network addresses (:func:`scrub`) before they are sent.
"""

from __future__ import annotations

import math
import re
import secrets

import grpc

from services.common.logging import get_logger

log = get_logger("gateway.errors")


class ApiError(Exception):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "invalid_argument"

    #: request validation: one ``{"loc", "msg", "type"}`` per problem (``ErrorBody.errors``)
    errors: list[dict] | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        """The JSON error body (``ErrorBody``): ``{"error": kind, "detail": message}`` plus extras."""
        out = {"error": self.kind, "detail": self.message}
        if self.errors is not None:
            out["errors"] = self.errors
        return out

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with the error response (e.g. ``Retry-After``)."""
        return {}

    @property
    def summary(self) -> str:
        """What a record the client reads later (a failed job's ``error``) says: the message, except for
        :class:`Internal`, whose message is generic and whose summary is one scrubbed line naming the failure."""
        return getattr(self, "_summary", None) or self.message

    def __reduce__(self):  # picklable whatever a subclass's __init__ takes (errors may cross Ray)
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def _rebuild(cls, args, state):
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class InvalidArgument(ApiError):
    http_status = 422
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "invalid_argument"


class BadId(ApiError):
    """A malformed id (batch, job, file name): never touches the store (path traversal guard)."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "bad_id"


class BadRequest(ApiError):
    """A request that cannot be read at all (body not UTF-8 / not JSON text)."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "bad_request"


class NotFound(ApiError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    kind = "not_found"


class MethodNotAllowed(ApiError):
    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    kind = "method_not_allowed"


class TooLarge(ApiError):
    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = "too_large"


class UnsupportedMediaType(ApiError):
    http_status = 415
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "unsupported_media_type"


class TooManyJobs(ApiError):
    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = "too_many_jobs"


class RateLimited(ApiError):
    """Too many requests for this key / client; retry after ``retry_after_s`` seconds (``Retry-After``)."""

    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = "rate_limited"

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = None if retry_after_s is None else max(0.0, float(retry_after_s))

    def body(self) -> dict:
        out = super().body()
        if self.retry_after_s is not None:
            out["retry_after_s"] = self.retry_after_s
        return out

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class NotReady(ApiError):
    """A job result asked for before the job finished."""

    http_status = 409
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    kind = "not_ready"


class Unauthenticated(ApiError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    kind = "unauthenticated"


class Forbidden(ApiError):
    """A valid API key without the scope this operation needs."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    kind = "forbidden"


class Unavailable(ApiError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    kind = "unavailable"


class Internal(ApiError):
    """A server-side failure. The message is generic; ``error_id`` names the server log entry with the details."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    kind = "internal"

    def __init__(self, message: str = "", error_id: str | None = None, summary: str | None = None):
        self.error_id = error_id or new_error_id()
        message = message or (f"internal error {self.error_id}: the server could not complete this request; "
                              f"it logged the details under this id (quote it when reporting the problem)")
        super().__init__(message)
        #: one scrubbed line naming the failure ("RuntimeError: injected failure at seed 45 (error id …)", no
        #: paths, addresses or traceback) for a failed job's ``error``; responses send the generic ``message``
        self._summary = summary or message

    def body(self) -> dict:
        return {**super().body(), "error_id": self.error_id}


def new_error_id() -> str:
    return secrets.token_hex(6)


def internal_error(exc: BaseException, where: str = "") -> Internal:
    """An :class:`Internal` for ``exc`` (never echoing it) and one server-side log entry with its traceback."""
    first = (str(exc).strip().splitlines() or [""])[0]
    eid = new_error_id()
    err = Internal(error_id=eid, summary=f"{scrub(f'{type(exc).__name__}: {first}', 300)} (error id {eid})")
    log.error("internal error %s%s: %s: %s", err.error_id, f" in {where}" if where else "", type(exc).__name__, exc,
              exc_info=(type(exc), exc, exc.__traceback__), extra={"error_id": err.error_id})
    return err


# ---- scrubbing messages of the shared layers ----------------------------------------------------
_URL_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_IP_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?(?![\w.])|\[[0-9a-fA-F:]+\](?::\d+)?")
_PATH_RE = re.compile(r"(?<![\w/.:])(?:~|\.{1,2})?/(?!v1/)(?:[\w.@+%-]+/)+[\w.@+%-]*|(?<![\w/])[A-Za-z]:\\[^\s'\"]+")
_PID_RE = re.compile(r"\bpid[=: ]\s*\d+", re.IGNORECASE)
_NOT_FOUND_IN_RE = re.compile(r" (?:not found )?in (?:<store>|<path>)$")
MAX_DETAIL_CHARS = 2000


def scrub(message: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``message`` without filesystem paths, URLs, IP addresses and PIDs, as valid UTF-8, at most ``limit``
    characters (client input echoed in messages can be long or hold lone surrogates)."""
    s = str(message)
    s = _URL_RE.sub("<store>", s)
    s = _IP_RE.sub("<address>", s)
    s = _PATH_RE.sub("<path>", s)
    s = _PID_RE.sub("pid <hidden>", s)
    s = s.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


class BatchDamagedError(ApiError):
    """Stored data that no longer matches its manifest (a missing or corrupt file): the server's fault, not
    the request's, and not transient. The message names the batch and the file only."""

    http_status = 500
    grpc_code = grpc.StatusCode.DATA_LOSS
    kind = "batch_damaged"


def api_error(exc: BaseException) -> ApiError:
    """Map an exception of the shared layers onto an :class:`ApiError` (unknown ones -> :class:`Internal`,
    logged with an error id; the client sees only the id)."""
    if isinstance(exc, ApiError):
        return exc
    # Exceptions raised inside a Ray replica arrive as RayTaskError (which also subclasses the original type
    # when it can, but its message carries the remote traceback): judge and report the original.
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return api_error(cause)
    from services.common.findings import ConditionError
    from services.common.store import BatchDamaged, BatchNotFound, InvalidBatchId
    from services.generator.base import GeneratorError
    from services.metrics.errors import MetricsError

    if isinstance(exc, InvalidBatchId):
        return BadId(scrub(str(exc)))
    if isinstance(exc, BatchDamaged):
        log.error("damaged batch", extra={"batch_id": exc.batch_id, "problems": exc.problems[:20]})
        return BatchDamagedError(scrub(str(exc)) + "; restore it from a backup, or delete and regenerate it")
    if isinstance(exc, BatchNotFound):
        # "batch X not found in <store root>": the root is the server's business
        return NotFound(_NOT_FOUND_IN_RE.sub(" not found", scrub(str(exc))))
    if isinstance(exc, (ConditionError, GeneratorError, MetricsError)):  # UnknownModel is a GeneratorError
        return InvalidArgument(scrub(str(exc)))
    return internal_error(exc)


def quoted(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (client input can be huge)."""
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 4] + "…" + s[-3:]
