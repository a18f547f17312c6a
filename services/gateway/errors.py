"""Transport-neutral API errors, and their ONE mapping onto each transport.

The gateway core raises :class:`ApiError` subclasses; errors of the shared layers (conditions, prompts, models,
store, metrics) are mapped onto them by :func:`api_error`. :data:`STATUS` is the one table of each kind's HTTP
status and gRPC status code; :meth:`ApiError.body` is the one JSON error body (``ErrorBody``) and
:meth:`ApiError.headers` its HTTP headers (subclasses add data through attributes, never by overriding them),
:func:`error_response` the one HTTP error response (REST routes and every ASGI middleware), :func:`grpc_status`
the one gRPC status (code, details) of an error.

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
from starlette.responses import JSONResponse

from services.common.logging import get_logger

log = get_logger("gateway.errors")

_C = grpc.StatusCode
#: The one mapping of the error vocabulary onto the transports: kind -> (HTTP status, gRPC status code).
STATUS: dict[str, tuple[int, grpc.StatusCode]] = {
    "invalid_argument": (422, _C.INVALID_ARGUMENT),
    "bad_id": (400, _C.INVALID_ARGUMENT),
    "bad_request": (400, _C.INVALID_ARGUMENT),
    "unauthenticated": (401, _C.UNAUTHENTICATED),
    "forbidden": (403, _C.PERMISSION_DENIED),
    "not_found": (404, _C.NOT_FOUND),
    "method_not_allowed": (405, _C.UNIMPLEMENTED),
    "not_ready": (409, _C.FAILED_PRECONDITION),
    "conflict": (409, _C.ALREADY_EXISTS),
    "too_large": (413, _C.RESOURCE_EXHAUSTED),
    "unsupported_media_type": (415, _C.INVALID_ARGUMENT),
    "too_many_jobs": (429, _C.RESOURCE_EXHAUSTED),
    "rate_limited": (429, _C.RESOURCE_EXHAUSTED),
    "internal": (500, _C.INTERNAL),
    "batch_damaged": (500, _C.DATA_LOSS),
    "unavailable": (503, _C.UNAVAILABLE),
    "http_error": (400, _C.UNKNOWN),  # HttpError: the web framework's own status (REST only)
}
#: Most characters of an HTTP error's ``detail`` (an echoed 1 MB id is not a useful error message).
MAX_DETAIL_CHARS = 2000
#: Most UTF-8 bytes of a gRPC status message: grpc-message travels percent-encoded in trailing metadata, whose
#: soft limit is 8 KiB; a longer one (a 100 kB id echoed back) reaches the client as RESOURCE_EXHAUSTED instead.
MAX_DETAILS_BYTES = 1000


class ApiError(Exception):
    """One error of the API. Subclasses set ``kind``; :data:`STATUS` gives their HTTP status and gRPC code."""

    kind = "invalid_argument"
    http_status: int
    grpc_code: grpc.StatusCode

    #: request validation: one ``{"loc", "msg", "type"}`` per problem (``ErrorBody.errors``)
    errors: list[dict] | None = None
    #: rate limits: seconds until a retry can succeed (``ErrorBody.retry_after_s``, ``Retry-After``)
    retry_after_s: float | None = None
    #: server errors: the id the server logged the details under (``ErrorBody.error_id``)
    error_id: str | None = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.http_status, cls.grpc_code = STATUS[cls.kind]  # a kind missing from STATUS fails at import

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        """THE JSON error body (``ErrorBody``): ``{"error": kind, "detail": message}`` plus ``errors``,
        ``retry_after_s`` and ``error_id`` when the error has them; valid UTF-8, ``detail`` at most
        MAX_DETAIL_CHARS."""
        detail = _clean(self.message)
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[:MAX_DETAIL_CHARS - 1] + "…"
        out = {"error": self.kind, "detail": detail}
        for key in ("errors", "retry_after_s", "error_id"):
            if getattr(self, key) is not None:
                out[key] = _clean(getattr(self, key))
        return out

    def headers(self) -> dict[str, str]:
        """HTTP headers of the error response: ``Retry-After`` (whole seconds) when a retry can succeed later,
        ``WWW-Authenticate`` on 401."""
        out = {}
        if self.retry_after_s is not None:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        if self.http_status == 401:
            out["WWW-Authenticate"] = "Bearer"
        return out

    @property
    def summary(self) -> str:
        """What a record the client reads later (a failed job's ``error``) says: the message, except for
        :class:`Internal`, whose message is generic and whose summary is one scrubbed line naming the failure."""
        return getattr(self, "_summary", None) or self.message

    def __reduce__(self):  # picklable whatever a subclass's __init__ takes (errors may cross Ray)
        return _rebuild, (type(self), self.args, dict(self.__dict__))


ApiError.http_status, ApiError.grpc_code = STATUS[ApiError.kind]


def _rebuild(cls, args, state):
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class InvalidArgument(ApiError):
    """A well-formed request the rules refuse: an unknown model or reference, a count or seed out of range, a
    param the model does not use, a contradictory condition, an unreadable prompt (422 / INVALID_ARGUMENT)."""

    kind = "invalid_argument"


class BadId(ApiError):
    """A malformed id (batch, job, file name). Refused before anything touches the store: this is the path
    traversal guard, so an id is never joined to a path unless it matches its pattern."""

    kind = "bad_id"


class MethodNotAllowed(ApiError):
    kind = "method_not_allowed"  # a REST path exists, not with this HTTP method


class BadRequest(ApiError):
    """A request that cannot be read at all (body not UTF-8 / not JSON text)."""

    kind = "bad_request"


class TooManyJobs(ApiError):
    """``limits.max_concurrent_jobs`` jobs are queued or running already; submit again when one finished, or
    raise the limit (``SYNTHRAD_LIMITS__MAX_CONCURRENT_JOBS``)."""

    kind = "too_many_jobs"


class NotFound(ApiError):
    """No such model, batch, file or job — or one the caller's key may not see (its existence stays hidden)."""

    kind = "not_found"


class Unavailable(ApiError):
    kind = "unavailable"  # a part this request needs is not deployed or not up (metrics, jobs folder)


class TooLarge(ApiError):
    """A request over ``limits.max_request_bytes``: a REST body (413) or a gRPC request message."""

    kind = "too_large"


class RateLimited(ApiError):
    """Too many requests for this key / client; retry after ``retry_after_s`` seconds (``Retry-After``)."""

    kind = "rate_limited"

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = None if retry_after_s is None else max(0.0, float(retry_after_s))


class UnsupportedMediaType(ApiError):
    """A body that is not ``application/json``."""

    kind = "unsupported_media_type"


class Forbidden(ApiError):
    kind = "forbidden"  # a valid API key without the scope this operation needs (auth.OPERATION_SCOPES)


class NotReady(ApiError):
    """A job result asked for before the job finished (poll the job, or watch it: WatchJob /
    GET /v1/jobs/{id}); a job that finished and failed is not this error: its record says why."""

    kind = "not_ready"


class Conflict(ApiError):
    """The request contradicts what is stored (a study case answered already, an idempotency key reused for
    another answer): 409 / ALREADY_EXISTS."""

    kind = "conflict"


class Unauthenticated(ApiError):
    """No API key, an unknown one, or (keyless local mode) a call from beyond loopback."""

    kind = "unauthenticated"


class HttpError(ApiError):
    """An HTTP error of the web framework itself that none of our kinds describes (keeps its status)."""

    kind = "http_error"

    def __init__(self, message: str, http_status: int):
        super().__init__(message)
        self.http_status = int(http_status)


class Internal(ApiError):
    """A server-side failure. The message is generic; ``error_id`` names the server log entry with the details."""

    kind = "internal"

    def __init__(self, message: str = "", error_id: str | None = None, summary: str | None = None):
        self.error_id = error_id or new_error_id()
        message = message or (f"internal error {self.error_id}: the server could not complete this request; "
                              f"it logged the details under this id (quote it when reporting the problem)")
        super().__init__(message)
        #: one scrubbed line naming the failure ("RuntimeError: injected failure at seed 45 (error id …)", no
        #: paths, addresses or traceback) for a failed job's ``error``; responses send the generic ``message``
        self._summary = summary or message


class BatchDamagedError(ApiError):
    """Stored data that no longer matches its manifest (a missing or corrupt file): the server's fault, not
    the request's, and not transient. The message names the batch and the file only."""

    kind = "batch_damaged"


# ---- the two transports ---------------------------------------------------------------------------
def _clean(x):
    """A JSON-safe copy: text as valid UTF-8 (no lone surrogates), no NaN/Infinity."""
    if isinstance(x, str):
        return x.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(x, dict):
        return {_clean(str(k)): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def error_response(err: ApiError) -> JSONResponse:
    """THE HTTP error response (an ASGI app too: middleware ``await error_response(err)(scope, receive, send)``)."""
    return JSONResponse(err.body(), status_code=err.http_status, headers=err.headers())


def grpc_status(err: ApiError) -> tuple[grpc.StatusCode, str]:
    """THE gRPC status of an error: (code, details), the details cut to MAX_DETAILS_BYTES of UTF-8."""
    raw = err.message.encode("utf-8", "backslashreplace")
    if len(raw) <= MAX_DETAILS_BYTES:
        return err.grpc_code, raw.decode("utf-8")
    return err.grpc_code, raw[:MAX_DETAILS_BYTES - 3].decode("utf-8", "ignore") + "…"


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


def api_error(exc: BaseException, where: str = "") -> ApiError:
    """Map an exception of the shared layers onto an :class:`ApiError` (unknown ones -> :class:`Internal`,
    logged with an error id, and ``where`` it happened; the client sees only the id)."""
    if isinstance(exc, ApiError):
        return exc
    # Exceptions raised inside a Ray replica arrive as RayTaskError (which also subclasses the original type
    # when it can, but its message carries the remote traceback): judge and report the original.
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return api_error(cause, where)
    from services.common.findings import ConditionError
    from services.common.store import BatchDamaged, BatchNotFound, InvalidBatchId
    from services.generator.base import GeneratorError
    from services.metrics.errors import MetricsError
    from services.studies.errors import (StudyBusy, StudyConflict, StudyDamaged, StudyError, StudyNotFound,
                                         StudyUnauthenticated)

    if isinstance(exc, InvalidBatchId):
        return BadId(scrub(str(exc)))
    if isinstance(exc, BatchDamaged):
        log.error("damaged batch", extra={"batch_id": exc.batch_id, "problems": exc.problems[:20]})
        return BatchDamagedError(scrub(str(exc)) + "; restore it from a backup, or delete and regenerate it")
    if isinstance(exc, BatchNotFound):
        # "batch X not found in <store root>": the root is the server's business
        return NotFound(_NOT_FOUND_IN_RE.sub(" not found", scrub(str(exc))))
    from services.generator.generation.service import GenerationOverloaded

    if isinstance(exc, GenerationOverloaded):
        err = Unavailable(scrub(str(exc)))
        err.retry_after_s = exc.retry_after_s
        return err
    if isinstance(exc, StudyError):
        if isinstance(exc, StudyDamaged):
            log.error("damaged study image", extra={"detail": str(exc)})
        kind = {StudyNotFound: NotFound, StudyConflict: Conflict, StudyUnauthenticated: Unauthenticated,
                StudyDamaged: BatchDamagedError, StudyBusy: Unavailable}.get(type(exc), InvalidArgument)
        err = kind(scrub(str(exc)))
        if isinstance(exc, StudyBusy):
            err.retry_after_s = 1.0
        return err
    if isinstance(exc, (ConditionError, GeneratorError, MetricsError)):  # UnknownModel is a GeneratorError
        return InvalidArgument(scrub(str(exc)))
    return internal_error(exc, where)


def quoted(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (client input can be huge)."""
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 4] + "…" + s[-3:]
