"""The reading pages on their own, for a reading workstation: ``synthrad study serve`` (no Ray, no models).

The same routes as on the gateway (:mod:`.studies_rest`), the same error bodies, the same Host-header guard
(only this machine's names unless ``security.allowed_hosts`` lists more) and request-size limit; it binds
127.0.0.1 unless told otherwise. ``/`` redirects to the reading page.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from services.common.config import Settings, get_settings
from services.studies.service import StudyService

from .audit import AuditLog
from .auth import ApiKeyAuth
from .errors import ApiError, error_response
from .limits import BodySizeLimit
from .rest import install_error_handling
from .studies_rest import include_studies


class _HostCheck:
    """Pure ASGI: the gateway's DNS-rebinding guard (a Host header naming another machine is refused)."""

    def __init__(self, app, auth: ApiKeyAuth):
        self.app, self.auth = app, auth

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
            try:
                self.auth.check_host(headers.get("host"))
            except ApiError as e:
                return await error_response(e)(scope, receive, send)
        return await self.app(scope, receive, send)


def create_study_app(settings: Settings | None = None, db_path=None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="synthrad reader studies", version="1.0",
                  summary="Readers judge real vs synthetic chest X-rays; the owner reads the results.",
                  openapi_tags=[{"name": "studies", "description": "Reader studies (reader token / owner key)."}])
    install_error_handling(app)
    app.add_middleware(_HostCheck, auth=ApiKeyAuth(None, settings.security))

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/study/", status_code=307)

    @app.get("/v1/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "ok"}

    include_studies(app, StudyService(db_path or settings.resolved_studies_db), AuditLog(settings.resolved_audit_log),
                    settings.security)
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_request_bytes)
    return app


__all__ = ["create_study_app"]
