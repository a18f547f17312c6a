"""REST access control as a pure ASGI middleware: Host check, API key, scope, rate limit, request counting.

Pure ASGI on purpose: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware("http")``) catches an exception
raised while a streaming body is sent and then ends the response normally, so a download that fails
mid-way (a damaged file) would reach the client as a complete, short archive. Here the exception propagates
to the server, which cuts the connection without the terminating chunk: the client sees an incomplete read.

The caller is left in ``scope["state"]["caller"]`` (``request.state.caller`` for the routes: visibility,
quotas, audit).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Match

from . import prometheus as m
from .audit import AuditLog
from .auth import LOCAL, REST_OPERATIONS, ApiKeyAuth
from .errors import ApiError, Forbidden, error_response

_FALSE = ("", "0", "false", "f", "no", "n", "off")
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def rest_operation(app, scope) -> str | None:
    """The operation name (``auth.REST_OPERATIONS``) of the route this request will reach, if any."""
    request = Request(scope)
    if request.url.path == "/metrics":  # any spelling of ray=true the route would accept needs admin
        ray = request.query_params.getlist("ray")
        return "RayMetrics" if any(v.strip().lower() not in _FALSE for v in ray) else None
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return REST_OPERATIONS.get((request.method, getattr(route, "path", "")))
    return None


class AccessControl:
    def __init__(self, app, fastapi_app, auth: ApiKeyAuth, audit: AuditLog):
        self.app, self.fastapi_app, self.auth, self.audit = app, fastapi_app, auth, audit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        op = rest_operation(self.fastapi_app, scope)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        client = scope.get("client")
        peer = client[0] if client else ""
        try:
            self.auth.check_host(headers.get("host"))
            if op is None and ApiKeyAuth.is_open_path(path):
                caller = LOCAL
            else:
                caller = self.auth.authenticate(headers, peer)
                if op is not None:
                    try:
                        self.auth.authorize(caller, op)
                    except Forbidden:
                        if self.auth.should_audit_denial(caller, op):
                            self.audit.record("auth.denied", caller.key_id, "denied", peer, operation=op)
                        raise
        except ApiError as e:
            m.count_request("rest", op or "unmatched", str(e.http_status))
            return await error_response(e)(scope, receive, send)
        scope.setdefault("state", {})["caller"] = caller
        status = {"code": 500}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            if path != "/metrics":
                route = scope.get("route")
                method = scope.get("method") if scope.get("method") in _METHODS else "OTHER"
                m.count_request("rest", f"{method} {getattr(route, 'path', 'unmatched')}", str(status["code"]))


__all__ = ["AccessControl", "rest_operation"]
