"""REST API (FastAPI), versioned under ``/v1``; OpenAPI at ``/openapi.json``, docs at ``/docs``.

See docs/api.md for the walkthrough. Every route delegates to :class:`~services.gateway.core.Platform`.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.common.provenance import Provenance

from . import prometheus as m
from .auth import ApiKeyAuth
from .core import Platform
from .errors import ApiError, api_error
from .limits import BodySizeLimit
from .schemas import BatchRequest, BatchSummary, ErrorBody, GenerateRequest, JobView, ModelView, ScoreRequest

API_VERSION = "v1"
_MEDIA = {".png": "image/png", ".dcm": "application/dicom", ".npz": "application/x-npz", ".tar": "application/x-tar",
          ".json": "application/json"}
_ERRORS = {400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 413: {"model": ErrorBody},
           422: {"model": ErrorBody}, 429: {"model": ErrorBody}}


def _batch_summary(man) -> BatchSummary:
    return BatchSummary(
        batch_id=man.batch_id, model_id=man.model_id, model_hash=man.model_hash, backend=man.backend,
        format=man.format, created=man.created, count=man.count, params=man.params,
        links={"self": f"/v1/batches/{man.batch_id}", "download": f"/v1/batches/{man.batch_id}/download",
               "first_image": f"/v1/batches/{man.batch_id}/images/0"},
    )


def _operation(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


def create_app(platform: Platform, auth: ApiKeyAuth | None = None) -> FastAPI:
    settings = platform.settings
    auth = auth or ApiKeyAuth(settings.api_keys)
    app = FastAPI(
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
            {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
        ],
    )
    app.state.platform = platform

    # ---- errors ---------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.kind, "detail": exc.message}, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        msgs = []
        for e in errs:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            msgs.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return JSONResponse({"error": "invalid_argument", "detail": "; ".join(msgs),
                             "errors": json.loads(json.dumps(errs, default=str))}, status_code=422)

    # ---- middleware: request counting + auth (body size limit wraps everything, added last) ------
    @app.middleware("http")
    async def _auth_and_count(request: Request, call_next):
        path = request.url.path
        if auth.enabled and not ApiKeyAuth.is_open_path(path):
            try:
                auth.check({k.lower(): v for k, v in request.headers.items()})
            except ApiError as e:
                m.REQUESTS.labels("rest", "unauthenticated", str(e.http_status)).inc()
                return JSONResponse({"error": e.kind, "detail": e.message}, status_code=e.http_status,
                                    headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        if path != "/metrics":
            m.REQUESTS.labels("rest", f"{request.method} {_operation(request)}", str(response.status_code)).inc()
        return response

    # ---- health -------------------------------------------------------------------------------
    @app.get("/v1/healthz", tags=["health"], summary="Liveness: the gateway answers.")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/readyz", tags=["health"], summary="Readiness: every deployment answers.",
             responses={503: {"description": "some component is not ready"}})
    async def readyz():
        comps = await platform.readiness()
        ready = all(v == "ok" for v in comps.values())
        return JSONResponse({"ready": ready, "components": comps}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (text exposition format).",
             response_class=Response)
    async def metrics(ray: bool = Query(False, description="Append Ray's own metrics (ray_serve_*) when reachable.")):
        body, ctype = m.exposition()
        if ray:
            body += m.ray_metrics_text().encode()
        return Response(body, media_type=ctype)

    # ---- models -------------------------------------------------------------------------------
    @app.get("/v1/models", tags=["models"], response_model=list[ModelView], summary="Served models with cards.")
    async def list_models():
        return await platform.model_infos()

    @app.get("/v1/models/{model_id}", tags=["models"], response_model=ModelView, responses=_ERRORS)
    async def get_model(model_id: str):
        return await platform.model_info(model_id)

    # ---- inline generation --------------------------------------------------------------------
    @app.post(
        "/v1/generate", tags=["generate"], responses={
            **_ERRORS,
            200: {"content": {"image/png": {}, "application/zip": {}, "application/x-npz": {}},
                  "description": "PNG (one image), ZIP of PNGs (several) or NPZ"},
        },
        summary="Generate up to limits.max_inline_images images and return them in the response.",
        response_class=Response,
    )
    async def generate(body: GenerateRequest):
        plan = await platform.plan(body.model, body.condition, body.prompt, body.count, body.seed, body.params,
                                   platform.limits.max_inline_images, "inline generation (use /v1/batches for more)")
        images = await platform.generate(plan)
        headers = {
            "X-Synthrad-Model": plan.model_id, "X-Synthrad-Backend": str(plan.info.get("backend", "")),
            "X-Synthrad-Seeds": ",".join(str(s) for s in plan.seeds), "X-Synthrad-Condition": plan.condition.key(),
            "X-Synthrad-Synthetic": "true",
        }
        if body.format == "npz":
            buf = io.BytesIO()
            np.savez_compressed(
                buf, images=images.astype(np.float32), seeds=np.asarray(plan.seeds, dtype=np.uint64),
                condition_codes=np.asarray([c.codes() for c in plan.conditions], dtype=np.int8),
                provenance=np.asarray(_provenance(plan, 0).to_json()),
            )
            return Response(buf.getvalue(), media_type="application/x-npz", headers={
                **headers, "Content-Disposition": 'attachment; filename="synthrad.npz"'})
        from services.common.codecs import encode_image

        pngs = [encode_image(images[i], body.format, _provenance(plan, i))[1] for i in range(len(images))]
        if len(pngs) == 1:
            return Response(pngs[0], media_type="image/png", headers=headers)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, data in enumerate(pngs):
                zf.writestr(f"{i:04d}-s{plan.seeds[i]}.png", data)
        return Response(buf.getvalue(), media_type="application/zip", headers={
            **headers, "Content-Disposition": 'attachment; filename="synthrad.zip"'})

    # ---- batches ------------------------------------------------------------------------------
    @app.post("/v1/batches", tags=["batches"], status_code=202, response_model=JobView, responses=_ERRORS,
              summary="Start a job that generates and stores a batch; poll GET /v1/jobs/{job_id}.")
    async def create_batch(body: BatchRequest):
        plan = await platform.plan(body.model, body.condition, body.prompt, body.count, body.seed, body.params,
                                   platform.limits.max_batch_images, "one batch")
        rec = platform.create_batch_job(plan, body.format)
        return JSONResponse(JobView.of(rec).model_dump(), status_code=202,
                            headers={"Location": f"/v1/jobs/{rec.job_id}"})

    @app.get("/v1/batches", tags=["batches"], response_model=list[BatchSummary], summary="Stored batches, newest first.")
    async def list_batches():
        return [_batch_summary(b) for b in await platform.list_batches()]

    @app.get("/v1/batches/{batch_id}", tags=["batches"], responses=_ERRORS,
             summary="A batch's manifest (model, hash, backend, per-image seed and condition).")
    async def get_batch(batch_id: str):
        man = await platform.get_batch(batch_id)
        return {**man.model_dump(mode="json"), "links": _batch_summary(man).links}

    @app.delete("/v1/batches/{batch_id}", tags=["batches"], responses=_ERRORS)
    async def delete_batch(batch_id: str):
        await platform.delete_batch(batch_id)
        return {"batch_id": batch_id, "deleted": True}

    @app.get("/v1/batches/{batch_id}/download", tags=["batches"], responses=_ERRORS, response_class=StreamingResponse,
             summary="The whole batch as a streamed tar (default) or zip archive.")
    async def download_batch(batch_id: str, archive: Literal["tar", "zip"] = "tar"):
        man = await platform.get_batch(batch_id)
        return StreamingResponse(
            platform.archive(man, archive), media_type="application/x-tar" if archive == "tar" else "application/zip",
            headers={"Content-Disposition": f'attachment; filename="{man.batch_id}.{archive}"'},
        )

    @app.get("/v1/batches/{batch_id}/images/{index}", tags=["batches"], responses=_ERRORS, response_class=Response,
             summary="One image of a batch, as stored (webdataset batches: the PNG member).")
    async def get_image(batch_id: str, index: int):
        name, data = await platform.image_bytes(batch_id, index)
        ext = "." + name.rsplit(".", 1)[-1].lower()
        return Response(data, media_type=_MEDIA.get(ext, "application/octet-stream"),
                        headers={"Content-Disposition": f'inline; filename="{name}"'})

    @app.get("/v1/batches/{batch_id}/files/{name}", tags=["batches"], responses=_ERRORS, response_class=Response,
             summary="One stored file by name (images, shards, manifest.json).")
    async def get_file(batch_id: str, name: str):
        data = await platform.read_file(batch_id, name)
        ext = "." + name.rsplit(".", 1)[-1].lower()
        return Response(data, media_type=_MEDIA.get(ext, "application/octet-stream"),
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # ---- jobs ---------------------------------------------------------------------------------
    @app.get("/v1/jobs", tags=["jobs"], response_model=list[JobView])
    async def list_jobs(kind: Literal["batch", "score"] | None = None):
        return [JobView.of(j) for j in platform.jobs.list(kind)]

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=JobView, responses=_ERRORS,
             summary="A job's state and progress (done/total); batch_id once a batch job succeeded.")
    async def get_job(job_id: str):
        return JobView.of(platform.jobs.get(job_id))

    # ---- scores -------------------------------------------------------------------------------
    @app.get("/v1/references", tags=["scores"], summary="Registered real reference sets.")
    async def references() -> list[str]:
        return await platform.references()

    @app.post("/v1/scores", tags=["scores"], status_code=202, response_model=JobView, responses=_ERRORS,
              summary="Start scoring a stored batch against a registered reference; poll GET /v1/scores/{job_id}.")
    async def create_score(body: ScoreRequest):
        rec = await platform.create_score_job(body.batch_id, body.reference, body.metrics, body.extractor)
        return JSONResponse(JobView.of(rec).model_dump(), status_code=202,
                            headers={"Location": f"/v1/scores/{rec.job_id}"})

    @app.get("/v1/scores/{job_id}", tags=["scores"], responses={**_ERRORS, 409: {"model": ErrorBody}},
             summary="The scores of a finished scoring job (409 while it runs).")
    async def get_score(job_id: str):
        rec = platform.score_result(job_id)
        return JobView.of(rec)

    from services.common.findings import ConditionError
    from services.common.store import StoreError
    from services.generator.base import GeneratorError

    async def _shared_error(request: Request, exc: Exception):
        err = api_error(exc)
        return JSONResponse({"error": err.kind, "detail": err.message}, status_code=err.http_status)

    for exc_type in (ConditionError, GeneratorError, StoreError):
        app.add_exception_handler(exc_type, _shared_error)

    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_request_bytes)
    return app


def _provenance(plan, i: int) -> Provenance:
    return Provenance(
        model_id=plan.model_id, model_hash=str(plan.info.get("model_hash", "")), seed=int(plan.seeds[i]),
        condition=plan.conditions[i], prompt=plan.prompt, backend=str(plan.info.get("backend", "")),
        params=plan.recorded_params(),
    )


__all__ = ["create_app", "API_VERSION"]
