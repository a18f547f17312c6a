"""API-key authentication for REST and gRPC.

Keys come from settings (``SYNTHRAD_API_KEYS='["key-1","key-2"]'``, a JSON list). With no key configured,
authentication is disabled — the local default, where ``synthrad serve`` binds to 127.0.0.1 only. With
keys configured every API call must carry one:

* REST: header ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``;
* gRPC: metadata ``x-api-key: <key>`` or ``authorization: Bearer <key>``.

Liveness/readiness (``/v1/healthz``, ``/v1/readyz``), ``/metrics`` (Prometheus scrapers) and the OpenAPI
docs stay open. Keys are compared in constant time; a missing or wrong key is 401 / UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac
from typing import Iterable, Mapping, Sequence

from .errors import Unauthenticated

OPEN_PATHS = ("/v1/healthz", "/v1/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")


class ApiKeyAuth:
    def __init__(self, keys: Iterable[str] | None):
        self.keys = [k for k in (keys or []) if k]

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def valid(self, key: str | None) -> bool:
        if not self.enabled:
            return True
        if not key:
            return False
        key_b = key.encode()
        ok = False
        for k in self.keys:  # no early exit: constant time over the key list
            ok |= hmac.compare_digest(key_b, k.encode())
        return ok

    @staticmethod
    def key_from(headers: Mapping[str, str]) -> str | None:
        key = headers.get("x-api-key")
        if key:
            return key.strip()
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    def check(self, headers: Mapping[str, str]) -> None:
        if not self.valid(self.key_from(headers)):
            raise Unauthenticated("missing or invalid API key: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'")

    def check_grpc(self, metadata: Sequence[tuple[str, str]] | None) -> None:
        if not self.enabled:
            return
        headers = {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in (metadata or [])}
        self.check(headers)

    @staticmethod
    def is_open_path(path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in OPEN_PATHS)
