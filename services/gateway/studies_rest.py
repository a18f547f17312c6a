"""Reader studies over HTTP: the ``/v1/studies`` API and the reading pages under ``/study/``.

Mounted on the gateway's FastAPI app (:func:`include_studies`) and served alone by ``synthrad study serve``
(:mod:`.studies_app`). Every route is a thin wrapper over :class:`~services.studies.service.StudyService`.

These paths authenticate themselves, not with API keys: a reader token (``Authorization: Bearer
<study>.r.<secret>``) opens that reader's session, cases, images and answers; the study's owner key
(``<study>.o.<secret>``) opens progress, results, report, export and new readers. Pages and assets are static
files of the package, served with a strict Content-Security-Policy (no external origin, no inline script).
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from services.common.config import SecuritySettings
from services.studies.errors import StudyUnauthenticated
from services.studies.model import LIKERT_LABELS, Reader
from services.studies.service import StudyService
from services.studies.stats import StudyResults

from .audit import AuditLog
from .quotas import AuthFailureGuard
from .schemas import ErrorBody
from .study_schemas import (CASE_ID_PATTERN, IMAGE_ID_PATTERN, STUDY_ID_PATTERN, AnswerAck, AnswerRequest,
                            CaseResponse, NewReader, NewReaderRequest, SessionView, StudyOverview)

#: the page assets a browser may fetch (name -> media type); nothing else of the package is served
ASSETS = {"common.js": "text/javascript; charset=utf-8", "reader.js": "text/javascript; charset=utf-8", "owner.js": "text/javascript; charset=utf-8",
          "study.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_ERR = {code: {"model": ErrorBody, "description": text} for code, text in {
    400: "Malformed request body.",
    401: "Missing or wrong reader token / owner key (Authorization: Bearer <token>).",
    429: "Too many failed token checks from this client: retry after Retry-After seconds.",
    404: "No such study, case or image.",
    409: "The case is answered already (and the study does not allow changing answers), it is not the current "
         "case, or the idempotency key was used for another case.",
    413: "Request body too large.", 415: "Request body not sent as JSON.",
    422: "Invalid argument: `detail` names the problem.",
    500: "Server-side failure (`error_id` names the log entry) or a damaged study image.",
}.items()}


def _errors(*codes: int) -> dict:
    return {c: _ERR[c] for c in codes}


_bearer = HTTPBearer(auto_error=False, description="a reader token or the study's owner key")
_STUDY = Path(..., pattern=STUDY_ID_PATTERN, description="study id (the part of a token before the first '.')")
_CASE = Path(..., pattern=CASE_ID_PATTERN)
_IMAGE = Path(..., pattern=IMAGE_ID_PATTERN)


def _token(creds: HTTPAuthorizationCredentials | None) -> str | None:
    return creds.credentials if creds is not None else None


def _case_response(study_id: str, view) -> CaseResponse:
    if view is None:
        return CaseResponse(done=True, case=None)
    return CaseResponse(done=False, case={
        "case_id": view.case_id, "position": view.position, "total": view.total, "kind": view.kind,
        "images": [{"slot": im.slot, "url": f"/v1/studies/{study_id}/images/{im.image_id}"} for im in view.images],
        "choices": list(view.choices),
        "likert": [{"slot": q.slot, "finding": q.finding, "text": q.text} for q in view.likert],
        "answer": view.answer})


def study_router(service: StudyService, audit: AuditLog | None = None,
                 security: SecuritySettings | None = None) -> APIRouter:
    """The routes. ``audit`` records owner-key failures (once a minute per client and study), exports and new
    readers; a client that fails token checks too often is locked out (429) like one that fails API keys."""
    audit = audit or AuditLog(None)
    guard = AuthFailureGuard(security or SecuritySettings())
    denied_at: dict[tuple[str, str], float] = {}

    async def authenticated(request: Request, check, study_id: str, token: str | None, role: str):
        peer = _peer(request)
        try:
            return await run_in_threadpool(check, study_id, token)
        except StudyUnauthenticated:
            guard.check(peer)  # a valid token is never locked out (readers behind one NAT)
            guard.failed(peer, f"study {role} token")
            now = time.monotonic()
            if role == "owner" and now - denied_at.get((peer, study_id), -1e9) >= 60:
                if len(denied_at) > 10_000:
                    denied_at.clear()
                denied_at[(peer, study_id)] = now
                audit.record("study.denied", None, "denied", peer, study_id=study_id)
            raise
    router = APIRouter(tags=["studies"])
    api = APIRouter(prefix="/v1/studies/{study_id}", tags=["studies"], responses=_errors(401, 404, 422, 429, 500))

    async def reader(request: Request, study_id: str = _STUDY, creds=Depends(_bearer)) -> tuple[str, Reader]:
        return study_id, await authenticated(request, service.authenticate_reader, study_id, _token(creds), "reader")

    async def owner(request: Request, study_id: str = _STUDY, creds=Depends(_bearer)) -> str:
        await authenticated(request, service.authenticate_owner, study_id, _token(creds), "owner")
        return study_id

    # ---- reader -------------------------------------------------------------------------------------------
    @api.get("/session", response_model=SessionView, summary="Reader: the study, who is signed in, progress.")
    async def session(auth: tuple[str, Reader] = Depends(reader)):
        study_id, who = auth
        info = await run_in_threadpool(service.info, study_id)
        answered, total = await run_in_threadpool(service.answered, study_id, who)
        return _json(SessionView(
            study={"id": info.id, "title": info.title, "instructions": info.instructions,
                   "allow_revise": info.allow_revise, "likert": info.likert, "modes": list(info.modes),
                   "n_cases": info.n_cases, "image_size": info.image_size},
            reader={"id": who.id, "name": who.name}, answered=answered, total=total, done=answered >= total,
            likert_labels={str(k): v for k, v in LIKERT_LABELS.items()}))

    @api.get("/cases/current", response_model=CaseResponse,
             summary="Reader: the first unanswered case (done: true when every case is answered).")
    async def current_case(auth: tuple[str, Reader] = Depends(reader)):
        study_id, who = auth
        return _json(_case_response(study_id, await run_in_threadpool(service.case_at, study_id, who, None)))

    @api.get("/cases/{position}", response_model=CaseResponse, responses=_errors(409),
             summary="Reader: the case at a position (an answered one only when the study allows revising).")
    async def case_at(position: int = Path(..., ge=0, le=1_000_000), auth: tuple[str, Reader] = Depends(reader)):
        study_id, who = auth
        return _json(_case_response(study_id, await run_in_threadpool(service.case_at, study_id, who, position)))

    @api.get("/images/{image_id}", response_class=Response,
             responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "a de-identified 8-bit greyscale PNG"}},
             summary="Reader: an image of one of the reader's cases.")
    async def image(image_id: str = _IMAGE, auth: tuple[str, Reader] = Depends(reader)):
        study_id, who = auth
        data = await run_in_threadpool(service.image, study_id, who, image_id)
        return Response(data, media_type="image/png", headers={**API_HEADERS, "Cache-Control": "private, max-age=3600"})

    @api.post("/answers", response_model=AnswerAck, responses=_errors(400, 409, 413, 415),
              summary="Reader: answer the current case (idempotent: the same idempotency_key stores nothing twice).")
    async def answer(body: AnswerRequest, auth: tuple[str, Reader] = Depends(reader)):
        study_id, who = auth
        ack = await run_in_threadpool(service.answer, study_id, who, body.case_id, body.choice,
                                      [x.model_dump() for x in body.likert], body.idempotency_key)
        return _json(AnswerAck(**ack))

    # ---- owner ----------------------------------------------------------------------------------------------
    @api.get("", response_model=StudyOverview, summary="Owner: the study and each reader's progress.")
    async def overview(study_id: str = Depends(owner)):
        info = await run_in_threadpool(service.info, study_id)
        prog = await run_in_threadpool(service.progress, study_id)
        return _json(StudyOverview(
            study={"id": info.id, "title": info.title, "instructions": info.instructions,
                   "allow_revise": info.allow_revise, "likert": info.likert, "modes": list(info.modes),
                   "n_cases": info.n_cases, "image_size": info.image_size, "created": info.created,
                   "seed": info.seed, "design_sha256": info.design_sha256},
            readers=[{"id": p["reader_id"], "name": p["name"], "answered": p["answered"], "total": p["total"],
                      "last_answer_at": p["last_answer_at"]} for p in prog]))

    @api.get("/results", response_model=StudyResults, summary="Owner: UAR, CAR, accuracy, TPR, TNR, FIR with 95 % CIs; kappa; Likert.")
    async def results(study_id: str = Depends(owner)):
        res = await run_in_threadpool(service.results, study_id)
        return _json_dict(res.model_dump(mode="json"))

    @api.get("/report", response_class=Response, summary="Owner: the self-contained HTML report.",
             responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "HTML"}})
    async def report(study_id: str = Depends(owner)):
        text = await run_in_threadpool(service.report, study_id)
        return Response(text, media_type="text/html; charset=utf-8",
                        headers={**API_HEADERS, **{k: v for k, v in PAGE_HEADERS.items() if k != "Cache-Control"},
                                 "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'"})

    @api.get("/export", response_class=Response, summary="Owner: every answer with its truth (CSV or JSON).",
             responses={200: {"content": {"text/csv": {"schema": {"type": "string"}},
                                          "application/json": {"schema": {"type": "object"}}},
                              "description": "the answers joined with the answer key"}})
    async def export(request: Request, study_id: str = Depends(owner), format: Literal["csv", "json"] = Query("csv")):
        data = await run_in_threadpool(service.export, study_id, format)
        audit.record("study.export", None, "ok", _peer(request), study_id=study_id, format=format)
        media = "text/csv; charset=utf-8" if format == "csv" else "application/json"
        return Response(data, media_type=media, headers={
            **API_HEADERS, "Content-Disposition": f'attachment; filename="{study_id}-answers.{format}"'})

    @api.post("/readers", response_model=NewReader, status_code=201, responses=_errors(400, 409, 413, 415),
              summary="Owner: add a reader; the response carries the reader's token (shown once).")
    async def add_reader(body: NewReaderRequest, request: Request, study_id: str = Depends(owner)):
        rdr, token = await run_in_threadpool(service.add_reader, study_id, body.name)
        audit.record("study.add_reader", None, "ok", _peer(request), study_id=study_id, reader_id=rdr.id)
        return _json(NewReader(reader={"id": rdr.id, "name": rdr.name}, token=token), 201)

    router.include_router(api)

    # ---- pages ----------------------------------------------------------------------------------------------
    @router.get("/study", include_in_schema=False)
    async def study_root():
        return RedirectResponse("/study/", status_code=308)

    @router.get("/study/", include_in_schema=False)
    async def reader_page():
        return _page("reader.html")

    @router.get("/study/owner", include_in_schema=False)
    async def owner_page():
        return _page("owner.html")

    @router.get("/study/assets/{name}", include_in_schema=False)
    async def asset(name: str):
        if name not in ASSETS:
            from .errors import NotFound

            raise NotFound(f"no study asset {name[:60]!r}")
        return Response(_asset(name), media_type=ASSETS[name], headers=PAGE_HEADERS)

    return router


def _peer(request: Request) -> str:
    return request.client.host if request.client else ""


def _asset(name: str) -> bytes:
    return resources.files("services.studies").joinpath("web", name).read_bytes()


def _page(name: str) -> Response:
    return Response(_asset(name), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def _json(model, status: int = 200) -> Response:
    return _json_dict(model.model_dump(mode="json"), status)


def _json_dict(data, status: int = 200) -> Response:
    from fastapi.responses import JSONResponse

    return JSONResponse(data, status_code=status, headers=API_HEADERS)


def include_studies(app: FastAPI, service: StudyService, audit: AuditLog | None = None,
                    security: SecuritySettings | None = None) -> None:
    """Mount the study API and pages on an app."""
    app.include_router(study_router(service, audit, security))


__all__ = ["ASSETS", "PAGE_HEADERS", "include_studies", "study_router"]
