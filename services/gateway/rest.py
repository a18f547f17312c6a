"""REST API (FastAPI), versioned under ``/v1``; OpenAPI at ``/openapi.json``, docs at ``/docs``.

See docs/api.md for the walkthrough. Every route delegates to :class:`~services.gateway.core.Platform`.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from typing import Literal

import numpy as np
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import prometheus as m
from .auth import LOCAL, ApiKeyAuth, Caller
from .core import Platform
from .errors import (ApiError, BadId, BadRequest, HttpError, InvalidArgument, MethodNotAllowed, NotFound,
                     UnsupportedMediaType, api_error, error_response, quoted, scrub)
from .access import AccessControl
from .limits import BodySizeLimit
from .schemas import (BATCH_ID_EXAMPLE, BATCH_ID_PATTERN, FILE_NAME_PATTERN, JOB_ID_EXAMPLE, JOB_ID_PATTERN,
                      BatchRequest, BatchSummary, ErrorBody, GenerateRequest, JobView, ModelView, Readiness,
                      EvaluationKind, EvaluationRequest, ScoreRequest)

_MEDIA = {".png": "image/png", ".dcm": "application/dicom", ".npz": "application/x-npz", ".tar": "application/x-tar",
          ".json": "application/json"}
#: Every error response the API documents; each has the ErrorBody JSON body. Routes pick theirs with _errors().
_ERRORS: dict[int, dict] = {code: {"model": ErrorBody, "description": text} for code, text in {
    400: "Malformed id (batch, job or file name: never looked up) or an unreadable body (not UTF-8 JSON text).",
    401: "Missing or invalid API key (when API keys are configured).",
    403: "The API key lacks the scope this operation needs.",
    404: "No such model, batch, job, image or file.",
    409: "The scoring job has not finished yet: poll again.",
    413: "Request body larger than limits.max_request_bytes.",
    415: "Request body not sent as JSON (Content-Type: application/json).",
    422: "Invalid argument: `detail` names each problem, `errors` lists them one per field.",
    429: "Too many jobs in flight, or the API key's rate or image quota is used up (Retry-After says when to retry).",
    500: "Server-side failure: `error_id` names the server's log entry with the details.",
    503: "A component this operation needs (a generator, the metrics deployment) is not available.",
}.items()}
#: What every authenticated route can answer: key, scope, Host header check (422), rate limit, server failure.
_API = (401, 403, 422, 429, 500)
_BODY = (400, 413, 415)  # routes with a JSON body


def _errors(*codes: int) -> dict[int, dict]:
    return {c: _ERRORS[c] for c in sorted(set(codes))}


_BATCH_ID = Path(..., pattern=BATCH_ID_PATTERN, max_length=64, examples=[BATCH_ID_EXAMPLE],
                 description=f"A batch id as issued by the store, e.g. {BATCH_ID_EXAMPLE} (UTC creation time "
                             "yyyymmddThhmmss, lower-case 't', then 12 hex digits); anything else is refused with 400.")
_JOB_ID = Path(..., pattern=JOB_ID_PATTERN, max_length=64, examples=[JOB_ID_EXAMPLE],
               description=f"A job id as issued by the gateway, e.g. {JOB_ID_EXAMPLE} ('job-' and 16 hex digits); "
                           "anything else is refused with 400.")
_ID_HINTS = {
    "batch_id": f"ids look like {BATCH_ID_EXAMPLE} (issued by the store)",
    "job_id": f"ids look like {JOB_ID_EXAMPLE} (issued by the gateway)",
    "name": "plain file names only (letters, digits, '.', '_', '-'; no paths), as listed in the batch manifest",
}
_JSON = "application/json"
_JSON_TYPES = (_JSON,)


def _is_json(content_type: str | None) -> bool:
    base = (content_type or "").split(";", 1)[0].strip().lower()
    return base in _JSON_TYPES or (base.startswith("application/") and base.endswith("+json"))


def _field_errors(exc: RequestValidationError) -> list[dict]:
    """pydantic's errors without the input values they echo (which can be NaN, surrogates or megabytes)."""
    out = []
    for e in exc.errors():
        loc = [x if isinstance(x, int) else scrub(str(x), 200) for x in e.get("loc", ())]
        msg = str(e.get("msg", "invalid value"))
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        etype = str(e.get("type", ""))
        if etype == "extra_forbidden" and loc:
            msg = f"unknown field {quoted(loc[-1])}: not part of this request (see /openapi.json)"
        elif loc == ["body"] and etype in ("model_attributes_type", "model_type", "dict_type"):
            msg = "the request body must be a JSON object (see /openapi.json), e.g. {\"count\": 1}"
        elif etype == "json_invalid":
            ctx = e.get("ctx") or {}
            pos = loc[1] if len(loc) > 1 else "?"
            msg = f"request body is not valid UTF-8 JSON: {ctx.get('error', 'decode error')} at character {pos}"
            loc = ["body"]
        out.append({"loc": loc, "msg": scrub(msg, 500), "type": etype})
    return out


def _validation_error(request: Request, exc: RequestValidationError) -> ApiError:
    """The ApiError for a request FastAPI could not validate: 400 for malformed ids and unreadable bodies, 415 for
    a body that is not JSON, else 422 naming every problem."""
    items = _field_errors(exc)
    raw = exc.errors()
    ctype = request.headers.get("content-type")
    if any(i["type"] == "json_invalid" for i in items):
        err: ApiError = BadRequest(next(i["msg"] for i in items if i["type"] == "json_invalid")
                                   + "; send a JSON object with Content-Type: application/json")
        err.errors = items
        return err
    if any(i["loc"] == ["body"] and i["type"] == "missing" for i in items):
        err = InvalidArgument("the request body is missing: send a JSON object with Content-Type: application/json "
                              "(its schema is in /openapi.json)")
        err.errors = items
        return err
    if any(i["loc"][:1] == ["body"] for i in items) and not _is_json(ctype):
        err = UnsupportedMediaType(f"the request body must be JSON sent with Content-Type: application/json "
                                   f"(got {quoted(ctype) if ctype else 'no Content-Type'})")
        err.errors = items
        return err
    ids = [(i, r) for i, r in zip(items, raw)
           if len(i["loc"]) == 2 and i["loc"][1] in _ID_HINTS and i["loc"][0] in ("path", "body")
           and i["type"] in ("string_pattern_mismatch", "string_too_long")]
    if ids and len(ids) == len(items):
        i, r = ids[0]
        what = {"batch_id": "batch id", "job_id": "job id", "name": "file name"}[i["loc"][1]]
        err = BadId(scrub(f"invalid {what} {quoted(r.get('input'))}: {_ID_HINTS[i['loc'][1]]}"))
        err.errors = items
        return err
    detail = "; ".join(f"{'.'.join(str(x) for x in i['loc'] if x != 'body')}: {i['msg']}" if
                       [x for x in i["loc"] if x != "body"] else i["msg"] for i in items)
    err = InvalidArgument(scrub(detail or "invalid request"))
    err.errors = items
    return err


def _http_error(request: Request, exc: StarletteHTTPException) -> ApiError:
    """Starlette/FastAPI's own HTTP errors (unknown route, wrong method, unparseable body) in the API's shape."""
    method, path = request.method, scrub(request.url.path, 200)
    if exc.status_code == 404:
        return NotFound(f"no such route: {method} {path} (the API is described at /docs and /openapi.json)")
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow") or ""
        return MethodNotAllowed(f"{method} is not allowed on {path}" + (f"; allowed: {allow}" if allow else ""))
    if exc.status_code == 400:
        return BadRequest("the request body could not be read: send UTF-8 encoded JSON with "
                          "Content-Type: application/json")
    return HttpError(scrub(str(exc.detail)), exc.status_code)


def _as_api_error(request: Request, exc: Exception) -> ApiError:
    """The ApiError of anything a route or middleware raised: FastAPI's validation errors, Starlette's own HTTP
    errors, ours, the shared layers' (:func:`~services.gateway.errors.api_error`), else a logged 500."""
    if isinstance(exc, RequestValidationError):
        return _validation_error(request, exc)
    if isinstance(exc, StarletteHTTPException):
        return _http_error(request, exc)
    return api_error(exc, f"{request.method} {request.url.path}")


class _CatchAll:
    """Innermost app-level safety net (pure ASGI): an exception no handler took becomes its JSON error (the
    shared layers' errors their status, anything else a 500 with an error id, logged with its traceback), so the
    request counter and the client see a normal response. Once a response has started (a streamed download), it
    can only be logged and the connection cut."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the point of this middleware
            err = api_error(exc, f"{scope.get('method')} {scope.get('path')}")
            if started:
                raise
            await error_response(err)(scope, receive, send)


def _batch_summary(man) -> BatchSummary:
    return BatchSummary(
        batch_id=man.batch_id, model_id=man.model_id, model_hash=man.model_hash, backend=man.backend,
        format=man.format, created=man.created, count=man.count, params=man.params,
        links={"self": f"/v1/batches/{man.batch_id}", "download": f"/v1/batches/{man.batch_id}/download",
               "first_image": f"/v1/batches/{man.batch_id}/images/0"},
    )


def install_error_handling(app: FastAPI) -> None:
    """Every error is JSON (ErrorBody, errors.error_response): ours, FastAPI's validation errors, Starlette's
    404/405/400, the shared layers' (by _CatchAll), and anything unexpected (500 with an error id; the traceback
    stays in the server log). Exception: ServerErrorMiddleware calls that handler for errors outside the routes.
    Shared by the gateway's app and the standalone study app."""
    async def _error(request: Request, exc: Exception):
        return error_response(_as_api_error(request, exc))

    for exc_type in (ApiError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, _error)
    app.add_middleware(_CatchAll)


def caller_of(request: Request) -> Caller:
    return getattr(request.state, "caller", LOCAL)


def create_app(platform: Platform, auth: ApiKeyAuth | None = None) -> FastAPI:
    settings = platform.settings
    auth = auth or platform.auth
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await platform.jobs.resume_pending()  # jobs orphaned before the event loop ran (embedded use)
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="synthrad",
        version="1.0",
        summary="Synthetic chest X-rays on demand, stored as marked batches, scored against real images.",
        description=(
            "Generate conditional synthetic chest X-rays (StyleGAN2, diffusion), store them as batches "
            "(PNG, DICOM, NPZ, WebDataset) with provenance, and score batches against registered real "
            "reference sets (FID with the standard Inception features, KID, precision/recall, ...). "
            + ("Authentication: send `X-API-Key` or `Authorization: Bearer`." if auth.enabled
               else "Authentication is disabled (no API keys configured).")
        ),
        openapi_tags=[
            {"name": "models", "description": "Served models and their cards."},
            {"name": "generate", "description": "Small synchronous generation."},
            {"name": "batches", "description": "Stored augmentation batches (jobs with progress)."},
            {"name": "jobs", "description": "Batch and scoring jobs."},
            {"name": "scores", "description": "Scoring batches against real references."},
            {"name": "evaluations", "description": "Utility, conditional accuracy, memorisation, bias and "
                                                   "per-finding fidelity of a stored batch."},
            {"name": "studies", "description": "Reader studies: readers (reader token) answer real-vs-synthetic "
                                               "cases on /study/; the owner (owner key) reads results."},
            {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
        ],
    )
    app.state.platform = platform

    install_error_handling(app)  # added before the middleware below, so it sits inside it (counted)

    # ---- middleware: request counting + auth (body size limit wraps everything, added last) ------
    app.add_middleware(AccessControl, fastapi_app=app, auth=auth, audit=platform.audit)

    # ---- health -------------------------------------------------------------------------------
    @app.get("/v1/healthz", tags=["health"], summary="Liveness: the gateway answers.", responses=_errors(422, 500))
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/readyz", tags=["health"], summary="Readiness: every deployment answers.", response_model=Readiness,
             responses={**_errors(422, 500), 503: {"model": Readiness, "description": "some component is not ready"}})
    async def readyz():
        comps = await platform.readiness()
        ready = all(v == "ok" for v in comps.values())
        return JSONResponse({"ready": ready, "components": comps}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (text exposition format).",
             response_class=Response, responses={
                 **_errors(*_API), 200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                         "description": "Prometheus text format (?ray=1 needs an admin key)"}})
    async def metrics(ray: bool = Query(False, description="Append Ray's own metrics (ray_serve_*) when reachable.")):
        body, ctype = await platform.metrics_exposition(), m.CONTENT_TYPE_LATEST
        if ray:
            body += m.ray_metrics_text().encode()
        return Response(body, media_type=ctype)

    # ---- models -------------------------------------------------------------------------------
    @app.get("/v1/models", tags=["models"], response_model=list[ModelView], summary="Served models with cards.",
             responses=_errors(*_API))
    async def list_models():
        return await platform.model_infos()

    @app.get("/v1/models/{model_id}", tags=["models"], response_model=ModelView, responses=_errors(*_API, 404))
    async def get_model(model_id: str):
        return await platform.model_info(model_id)

    # ---- inline generation --------------------------------------------------------------------
    @app.post(
        "/v1/generate", tags=["generate"], responses={
            **_errors(*_API, *_BODY, 503),
            200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                              "application/zip": {"schema": {"type": "string", "format": "binary"}},
                              "application/x-npz": {"schema": {"type": "string", "format": "binary"}}},
                  "description": "PNG (one image), ZIP of PNGs (several) or NPZ"},
        },
        summary="Generate up to limits.max_inline_images images and return them in the response.",
        response_class=Response,
    )
    async def generate(body: GenerateRequest, request: Request):
        plan = await platform.plan(body.model, body.condition, body.prompt, body.count, body.seed, body.params,
                                   platform.limits.max_inline_images, "inline generation (use /v1/batches for more)")
        images = await platform.generate(plan, caller_of(request))
        headers = {
            "X-Synthrad-Model": plan.model_id, "X-Synthrad-Backend": plan.model.backend,
            "X-Synthrad-Seeds": ",".join(str(s) for s in plan.seeds), "X-Synthrad-Condition": plan.condition.key(),
            "X-Synthrad-Synthetic": "true",
        }
        if body.format == "npz":
            buf = io.BytesIO()
            np.savez_compressed(
                buf, images=images.astype(np.float32), seeds=np.asarray(plan.seeds, dtype=np.uint64),
                condition_codes=np.asarray([c.codes() for c in plan.conditions], dtype=np.int8),
                provenance=np.asarray(plan.provenance(0).to_json()),
            )
            return Response(buf.getvalue(), media_type="application/x-npz", headers={
                **headers, "Content-Disposition": 'attachment; filename="synthrad.npz"'})
        from services.common.codecs import encode_image

        pngs = [encode_image(images[i], body.format, plan.provenance(i))[1] for i in range(len(images))]
        if len(pngs) == 1:
            return Response(pngs[0], media_type="image/png", headers=headers)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, data in enumerate(pngs):
                zf.writestr(f"{i:04d}-s{plan.seeds[i]}.png", data)
        return Response(buf.getvalue(), media_type="application/zip", headers={
            **headers, "Content-Disposition": 'attachment; filename="synthrad.zip"'})

    # ---- batches ------------------------------------------------------------------------------
    @app.post("/v1/batches", tags=["batches"], status_code=202, response_model=JobView,
              responses=_errors(*_API, *_BODY, 503),
              summary="Start a job that generates and stores a batch; poll GET /v1/jobs/{job_id}.")
    async def create_batch(body: BatchRequest, request: Request):
        plan = await platform.plan(body.model, body.condition, body.prompt, body.count, body.seed, body.params,
                                   platform.limits.max_batch_images, "one batch", screen=body.screen)
        rec = await platform.create_batch_job(plan, body.format, caller_of(request))
        return JSONResponse(JobView.of(rec).model_dump(), status_code=202,
                            headers={"Location": f"/v1/jobs/{rec.job_id}"})

    @app.get("/v1/batches", tags=["batches"], response_model=list[BatchSummary],
             summary="Stored batches, newest first.", responses=_errors(*_API))
    async def list_batches(request: Request):
        return [_batch_summary(b) for b in await platform.list_batches(caller_of(request))]

    @app.get("/v1/batches/{batch_id}", tags=["batches"], responses=_errors(*_API, 400, 404),
             summary="A batch's manifest (model, hash, backend, per-image seed and condition).")
    async def get_batch(request: Request, batch_id: str = _BATCH_ID):
        man = await platform.get_batch(batch_id, caller_of(request))
        return {**json.loads(man.to_json()), "links": _batch_summary(man).links}

    @app.delete("/v1/batches/{batch_id}", tags=["batches"], responses=_errors(*_API, 400, 404, 409),
                summary="Delete a stored batch.")
    async def delete_batch(request: Request, batch_id: str = _BATCH_ID):
        await platform.delete_batch(batch_id, caller_of(request))
        return {"batch_id": batch_id, "deleted": True}

    @app.get("/v1/batches/{batch_id}/download", tags=["batches"], response_class=StreamingResponse,
             responses={**_errors(*_API, 400, 404), 200: {"description": "tar or zip archive of the batch", "content": {
                 "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                 "application/zip": {"schema": {"type": "string", "format": "binary"}}}}},
             summary="The whole batch as a streamed tar (default) or zip archive.")
    async def download_batch(request: Request, batch_id: str = _BATCH_ID, archive: Literal["tar", "zip"] = "tar"):
        man = await platform.get_batch(batch_id, caller_of(request))
        await platform.check_files(man)  # a missing file is an error status, not a short 200 archive
        return StreamingResponse(
            platform.archive(man, archive), media_type="application/x-tar" if archive == "tar" else "application/zip",
            headers={"Content-Disposition": f'attachment; filename="{man.batch_id}.{archive}"'},
        )

    @app.get("/v1/batches/{batch_id}/images/{index}", tags=["batches"], response_class=Response,
             responses={**_errors(*_API, 400, 404), 200: {"description": "the image file as stored", "content": {
                 t: {"schema": {"type": "string", "format": "binary"}} for t in (
                     "image/png", "application/dicom", "application/x-npz", "application/octet-stream")}}},
             summary="One image of a batch, as stored (webdataset batches: the PNG member).")
    async def get_image(request: Request, batch_id: str = _BATCH_ID,
                        index: int = Path(..., ge=0, lt=2**31,
                                          description="0-based image index (< the batch's count)")):
        name, data = await platform.image_bytes(batch_id, index, caller_of(request))
        ext = "." + name.rsplit(".", 1)[-1].lower()
        return Response(data, media_type=_MEDIA.get(ext, "application/octet-stream"),
                        headers={"Content-Disposition": f'inline; filename="{name}"'})

    @app.get("/v1/batches/{batch_id}/files/{name}", tags=["batches"], response_class=Response,
             responses={**_errors(*_API, 400, 404), 200: {"description": "the stored file", "content": {
                 **{t: {"schema": {"type": "string", "format": "binary"}} for t in _MEDIA.values() if t != _JSON},
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                 _JSON: {"schema": {"type": "object", "description": "manifest.json: the batch manifest"}}}}},
             summary="One stored file by name (images, shards, manifest.json).")
    async def get_file(request: Request, batch_id: str = _BATCH_ID,
                       name: str = Path(..., pattern=FILE_NAME_PATTERN, max_length=128, examples=["manifest.json"],
                                        description="A file name from the batch manifest (no paths).")):
        data = await platform.read_file(batch_id, name, caller_of(request))
        ext = "." + name.rsplit(".", 1)[-1].lower()
        return Response(data, media_type=_MEDIA.get(ext, "application/octet-stream"),
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # ---- jobs ---------------------------------------------------------------------------------
    @app.get("/v1/jobs", tags=["jobs"], response_model=list[JobView], responses=_errors(*_API),
             summary="Batch and scoring jobs, newest first.")
    async def list_jobs(request: Request, kind: Literal["batch", "score", "evaluation"] | None = None):
        return [JobView.of(j) for j in await platform.list_jobs(kind, caller_of(request))]

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=JobView, responses=_errors(*_API, 400, 404),
             summary="A job's state and progress (done/total); batch_id once a batch job succeeded.")
    async def get_job(request: Request, job_id: str = _JOB_ID):
        return JobView.of(await platform.get_job(job_id, caller_of(request)))

    # ---- scores -------------------------------------------------------------------------------
    @app.get("/v1/references", tags=["scores"], summary="Registered real reference sets.",
             responses=_errors(*_API, 503))
    async def references() -> list[str]:
        return await platform.references()

    @app.post("/v1/scores", tags=["scores"], status_code=202, response_model=JobView,
              responses=_errors(*_API, *_BODY, 404, 503),
              summary="Start scoring a stored batch against a registered reference; poll GET /v1/scores/{job_id}.")
    async def create_score(body: ScoreRequest, request: Request):
        rec = await platform.create_score_job(body.batch_id, body.reference, body.metrics, body.extractor,
                                              caller_of(request))
        return JSONResponse(JobView.of(rec).model_dump(), status_code=202,
                            headers={"Location": f"/v1/scores/{rec.job_id}"})

    @app.get("/v1/scores/{job_id}", tags=["scores"], response_model=JobView, responses=_errors(*_API, 400, 404, 409),
             summary="The scores of a finished scoring job (409 while it runs); a failed job is its record "
                     "with state failed and the error.")
    async def get_score(request: Request, job_id: str = _JOB_ID):
        rec = await platform.score_result(job_id, caller_of(request))
        return JobView.of(rec)

    # ---- evaluations ---------------------------------------------------------------------------
    @app.get("/v1/evaluation-kinds", tags=["evaluations"], response_model=list[EvaluationKind],
             responses=_errors(*_API), summary="Evaluation kinds with their options' JSON schemas.")
    async def evaluation_kinds():
        return platform.evaluation_kinds()

    @app.get("/v1/datasets", tags=["evaluations"], responses=_errors(*_API),
             summary="Labelled real datasets configured for evaluations (names only).")
    async def datasets() -> list[str]:
        return platform.datasets()

    @app.post("/v1/evaluations", tags=["evaluations"], status_code=202, response_model=JobView,
              responses=_errors(*_API, *_BODY, 404, 503),
              summary="Start evaluating a stored batch (utility, conditioning, memorisation, bias, per-finding); "
                      "poll GET /v1/evaluations/{job_id}.")
    async def create_evaluation(body: EvaluationRequest, request: Request):
        rec = await platform.create_evaluation_job(body.batch_ids, body.kind, body.dataset, body.options,
                                                   caller_of(request))
        return JSONResponse(JobView.of(rec).model_dump(), status_code=202,
                            headers={"Location": f"/v1/evaluations/{rec.job_id}"})

    @app.get("/v1/evaluations/{job_id}", tags=["evaluations"], response_model=JobView,
             responses=_errors(*_API, 400, 404, 409),
             summary="A finished evaluation job: its result (tables, headline numbers, provenance) is the "
                     "record's result (409 while it runs); a failed job has state failed and the error.")
    async def get_evaluation(request: Request, job_id: str = _JOB_ID):
        return JobView.of(await platform.evaluation_result(job_id, caller_of(request)))

    @app.get("/v1/evaluations/{job_id}/report", tags=["evaluations"], responses=_errors(*_API, 400, 404, 409),
             response_class=Response, summary="A finished evaluation's self-contained HTML report (plots inline).")
    async def get_evaluation_report(request: Request, job_id: str = _JOB_ID):
        from services.metrics.evaluation.report import render_html
        from services.metrics.evaluation.result import EvaluationResult

        rec = await platform.evaluation_result(job_id, caller_of(request))
        if rec.result is None:
            raise NotFound(f"evaluation job {job_id} has no result ({rec.state.value}: {rec.error or 'no error'})")
        html = render_html([EvaluationResult.model_validate(rec.result)])
        return Response(html, media_type="text/html; charset=utf-8")

    if settings.studies.enabled:  # reader studies: /v1/studies + the reading pages under /study/
        from services.studies.service import StudyService

        from .studies_rest import include_studies

        include_studies(app, StudyService(settings.resolved_studies_db), platform.audit, settings.security)

    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_request_bytes)
    _document_links(app)
    return app


#: OpenAPI links: which response field feeds which operation's parameter (clients, and schemathesis' stateful
#: phase, follow a created job to its batch, its files and images).
_LINKS = [
    # (from method, from path, status, link name, to method, to path, {param: runtime expression or constant})
    ("POST", "/v1/batches", "202", "GetJob", "GET", "/v1/jobs/{job_id}", {"job_id": "$response.body#/job_id"}),
    ("POST", "/v1/scores", "202", "GetScore", "GET", "/v1/scores/{job_id}", {"job_id": "$response.body#/job_id"}),
    ("POST", "/v1/evaluations", "202", "GetEvaluation", "GET", "/v1/evaluations/{job_id}",
     {"job_id": "$response.body#/job_id"}),
    ("GET", "/v1/jobs/{job_id}", "200", "GetBatch", "GET", "/v1/batches/{batch_id}",
     {"batch_id": "$response.body#/batch_id"}),
    ("GET", "/v1/batches", "200", "GetBatch", "GET", "/v1/batches/{batch_id}",
     {"batch_id": "$response.body#/0/batch_id"}),
    ("GET", "/v1/batches/{batch_id}", "200", "DownloadBatch", "GET", "/v1/batches/{batch_id}/download",
     {"batch_id": "$response.body#/batch_id"}),
    ("GET", "/v1/batches/{batch_id}", "200", "GetFirstImage", "GET", "/v1/batches/{batch_id}/images/{index}",
     {"batch_id": "$response.body#/batch_id", "index": 0}),
    ("GET", "/v1/batches/{batch_id}", "200", "GetManifest", "GET", "/v1/batches/{batch_id}/files/{name}",
     {"batch_id": "$response.body#/batch_id", "name": "manifest.json"}),
    ("GET", "/v1/batches/{batch_id}", "200", "DeleteBatch", "DELETE", "/v1/batches/{batch_id}",
     {"batch_id": "$response.body#/batch_id"}),
]


def _document_links(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict:
        spec = original()
        if spec.get("x-synthrad-links"):
            return spec
        paths = spec.get("paths", {})
        for src_m, src_p, status, name, dst_m, dst_p, params in _LINKS:
            src = paths.get(src_p, {}).get(src_m.lower())
            dst = paths.get(dst_p, {}).get(dst_m.lower())
            if not src or not dst or status not in src.get("responses", {}):
                continue
            src["responses"][status].setdefault("links", {})[name] = {"operationId": dst["operationId"],
                                                                       "parameters": params}
        spec["x-synthrad-links"] = True
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


__all__ = ["create_app", "install_error_handling"]
