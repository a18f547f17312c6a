"""Who is calling and what they may do: API keys with scopes, one operation table for REST and gRPC.

Keys come from settings (``SYNTHRAD_API_KEYS``: a JSON list of :class:`~services.common.config.ApiKeySpec`
objects or bare strings). With no key configured, authentication is disabled — the local default, where
``synthrad serve`` binds to 127.0.0.1 only and the Host header must name this machine (DNS-rebinding guard).
With keys configured every API call must carry one:

* REST: header ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``;
* gRPC: metadata ``x-api-key: <key>`` or ``authorization: Bearer <key>``.

Every operation has ONE name (the gRPC method name; REST routes map onto the same names in
:data:`REST_OPERATIONS`) and ONE scope in :data:`OPERATION_SCOPES`. A key without the scope gets 403 /
PERMISSION_DENIED. Liveness/readiness, ``/metrics`` (Prometheus scrapers) and the OpenAPI docs stay open;
reader studies (``/study/``, ``/v1/studies``) check their own reader tokens and owner keys instead;
``/metrics?ray=1`` (Ray's own series) needs ``admin``.

Keys are stored and compared as sha256 digests, in constant time over the whole key list. A missing or wrong
key is 401 / UNAUTHENTICATED; a client that fails too often is locked out for a while (429, see
``quotas.AuthFailureGuard``).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from services.common.config import SCOPES, ApiKeySpec, SecuritySettings

from .errors import BadRequest, Forbidden, Unauthenticated
from .net import is_loopback
from .quotas import AuthFailureGuard, KeyLimiter

OPEN_PATHS = ("/v1/healthz", "/v1/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
#: paths that authenticate themselves, not with API keys: reader studies (a reader token or the study's owner
#: key, see services.gateway.studies_rest) and their pages
STUDY_PATHS = ("/study", "/v1/studies")

#: operation -> scope it needs (None: open). Operation names are the gRPC method names.
OPERATION_SCOPES: dict[str, str | None] = {
    "Ready": None,
    "ListModels": "read", "GetModel": "read", "ListReferences": "read",
    "Generate": "generate", "StreamGenerate": "generate", "CreateBatch": "generate",
    "ListJobs": "read", "GetJob": "read", "WatchJob": "read",
    "ListBatches": "read", "GetBatch": "read", "StreamBatchImages": "read",
    "DownloadBatch": "read", "GetImage": "read", "GetFile": "read",
    "DeleteBatch": "delete",
    "CreateScore": "score", "GetScore": "read",
    "ListEvaluationKinds": "read", "ListDatasets": "read",
    "CreateEvaluation": "score", "GetEvaluation": "read", "GetEvaluationReport": "read",
    "RayMetrics": "admin",
}

#: REST (method, route path) -> operation
REST_OPERATIONS: dict[tuple[str, str], str] = {
    ("GET", "/v1/models"): "ListModels",
    ("GET", "/v1/models/{model_id}"): "GetModel",
    ("POST", "/v1/generate"): "Generate",
    ("POST", "/v1/batches"): "CreateBatch",
    ("GET", "/v1/batches"): "ListBatches",
    ("GET", "/v1/batches/{batch_id}"): "GetBatch",
    ("DELETE", "/v1/batches/{batch_id}"): "DeleteBatch",
    ("GET", "/v1/batches/{batch_id}/download"): "DownloadBatch",
    ("GET", "/v1/batches/{batch_id}/images/{index}"): "GetImage",
    ("GET", "/v1/batches/{batch_id}/files/{name}"): "GetFile",
    ("GET", "/v1/jobs"): "ListJobs",
    ("GET", "/v1/jobs/{job_id}"): "GetJob",
    ("GET", "/v1/references"): "ListReferences",
    ("POST", "/v1/scores"): "CreateScore",
    ("GET", "/v1/scores/{job_id}"): "GetScore",
    ("GET", "/v1/evaluation-kinds"): "ListEvaluationKinds",
    ("GET", "/v1/datasets"): "ListDatasets",
    ("POST", "/v1/evaluations"): "CreateEvaluation",
    ("GET", "/v1/evaluations/{job_id}"): "GetEvaluation",
    ("GET", "/v1/evaluations/{job_id}/report"): "GetEvaluationReport",
}

@dataclass(frozen=True)
class Caller:
    """The authenticated caller of one request. ``key_id`` is None when authentication is disabled."""

    key_id: str | None
    scopes: frozenset[str]
    peer: str = ""

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def has(self, scope: str | None) -> bool:
        return scope is None or self.is_admin or scope in self.scopes

    def may_see(self, owner_key_id: str | None) -> bool:
        """Batches and jobs are visible to the key that made them, to admin keys, and to everyone when
        authentication is off."""
        return self.key_id is None or self.is_admin or owner_key_id == self.key_id


#: the caller when authentication is disabled (local use): everything is allowed and visible
LOCAL = Caller(key_id=None, scopes=frozenset(SCOPES))


def host_of(host_header: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1``."""
    h = (host_header or "").strip().lower()
    if h.startswith("["):
        return h[1:].split("]", 1)[0]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class ApiKeyAuth:
    def __init__(self, keys: Iterable[ApiKeySpec] | None, security: SecuritySettings | None = None):
        specs = list(keys or [])  # Settings.api_keys: already ApiKeySpec (bare strings converted there)
        self.specs = specs
        self._digests = [(bytes.fromhex(k.digest), k) for k in specs]
        self.security = security or SecuritySettings()
        self.limiter = KeyLimiter(specs)
        self.failures = AuthFailureGuard(self.security)
        self._denied: dict[tuple[str, str], float] = {}
        self._denied_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.specs)

    # ---- who ------------------------------------------------------------------------------------
    def lookup(self, key: str | None) -> ApiKeySpec | None:
        if not key:
            return None
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = None
        for d, spec in self._digests:  # no early exit: constant time over the key list
            if hmac.compare_digest(digest, d):
                found = spec
        return found

    @staticmethod
    def key_from(headers: Mapping[str, str]) -> str | None:
        key = headers.get("x-api-key")
        if key:
            return key.strip()
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    def authenticate(self, headers: Mapping[str, str], peer: str = "") -> Caller:
        """The caller for these headers (lower-case names); 401 for a missing/wrong key, 429 when locked out."""
        if not self.enabled:
            return Caller(LOCAL.key_id, LOCAL.scopes, peer)
        key = self.key_from(headers)
        spec = self.lookup(key)
        if spec is None:  # a valid key is never locked out (clients behind one NAT cannot shut each other out)
            self.failures.check(peer)
            self.failures.failed(peer, "missing key" if not key else "invalid key")
            raise Unauthenticated("missing or invalid API key: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'")
        return Caller(spec.id, frozenset(spec.scopes), peer)

    def authenticate_grpc(self, metadata: Sequence[tuple[str, object]] | None, peer: str = "") -> Caller:
        return self.authenticate(grpc_headers(metadata), peer)

    # ---- what -----------------------------------------------------------------------------------
    def authorize(self, caller: Caller, operation: str) -> None:
        """Charge one request to the key's rate (429 first: refused calls count too), then 403 unless the
        caller has the operation's scope."""
        if caller.key_id is not None:
            self.limiter.request(caller.key_id)
        scope = OPERATION_SCOPES.get(operation, "admin")  # an operation missing from the table: admin only
        if not caller.has(scope):
            raise Forbidden(f"API key {caller.key_id!r} may not {operation} (needs scope {scope!r}; "
                            f"it has {', '.join(sorted(caller.scopes)) or 'none'})")

    def should_audit_denial(self, caller: Caller, operation: str) -> bool:
        """True for the first refusal of (key, operation) in a minute: denials are audited, not every one."""
        now = time.monotonic()
        key = (caller.key_id or "", operation)
        with self._denied_lock:
            if now - self._denied.get(key, -1e9) < 60.0:
                return False
            if len(self._denied) > 10_000:
                self._denied.clear()
            self._denied[key] = now
            return True

    def charge_images(self, caller: Caller, n: int) -> None:
        self.limiter.images(caller.key_id, n)

    def refund_images(self, caller: Caller, n: int) -> None:
        self.limiter.refund(caller.key_id, n)

    # ---- where ----------------------------------------------------------------------------------
    def check_host(self, host_header: str | None) -> None:
        """While no API key is configured, only Host headers naming this machine (or ``allowed_hosts``) are
        served: a web page on another origin cannot reach a keyless local server through DNS rebinding."""
        allowed = [h.lower() for h in self.security.allowed_hosts]
        if self.enabled and not allowed:
            return
        host = host_of(host_header or "")
        if host in allowed or "*" in allowed:
            return
        if not self.enabled and is_loopback(host):
            return
        raise BadRequest("Host header not accepted: this server answers to localhost unless "
                         "SYNTHRAD_SECURITY__ALLOWED_HOSTS lists the name (or API keys are configured)")

    @staticmethod
    def is_open_path(path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in OPEN_PATHS + STUDY_PATHS)


def grpc_headers(metadata: Sequence[tuple[str, object]] | None) -> dict[str, str]:
    """gRPC metadata -> lower-case header dict. Binary (``-bin``) values and bytes that are not UTF-8 are
    dropped rather than decoded (a key is text), so odd metadata is an authentication failure, not a crash."""
    out: dict[str, str] = {}
    for k, v in metadata or []:
        name = str(k).lower()
        if name.endswith("-bin"):
            continue
        if isinstance(v, (bytes, bytearray)):
            try:
                v = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                continue
        out[name] = str(v)
    return out


__all__ = ["ApiKeyAuth", "Caller", "LOCAL", "OPERATION_SCOPES", "REST_OPERATIONS", "OPEN_PATHS", "grpc_headers",
           "host_of"]
