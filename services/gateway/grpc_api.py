"""gRPC API (``protos/synthrad/v1``): the same operations as REST, on :class:`~services.gateway.core.Platform`.

:class:`GrpcApi` holds one coroutine (or async generator, for server-streaming RPCs) per RPC, named like the RPC,
taking the request message and the :class:`~services.gateway.auth.Caller` and raising
:class:`~services.gateway.errors.ApiError` for failures; :meth:`GrpcApi.authenticate` turns a call's metadata
into the caller. The transports — Ray Serve's gRPC proxy and a plain ``grpc.aio`` server — are adapters generated
from the protos' service descriptors in :mod:`services.gateway.grpc_servicer`. Below: the conversions between
protobuf messages and the platform's types.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import numpy as np
from pydantic import ValidationError

from services.common.findings import FINDINGS, NO_FINDING, Condition, ConditionError, FindingState, canonical_finding
from services.common.provenance import Provenance
from services.generator.base import GenerationParams

from .auth import LOCAL, ApiKeyAuth, Caller
from .core import Platform
from .errors import Forbidden, InvalidArgument, TooLarge
from .jobs import JobRecord, JobState
from .stubs import batch_pb2, common_pb2, generator_pb2, metrics_pb2

_STATE_TO_PB = {FindingState.UNSPECIFIED: common_pb2.FINDING_STATE_UNSPECIFIED,
                FindingState.ABSENT: common_pb2.FINDING_STATE_ABSENT,
                FindingState.PRESENT: common_pb2.FINDING_STATE_PRESENT}
_PB_TO_STATE = {v: k for k, v in _STATE_TO_PB.items()}
_JOB_STATE = {JobState.QUEUED: common_pb2.JOB_STATE_QUEUED, JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
              JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED, JobState.FAILED: common_pb2.JOB_STATE_FAILED}
_STATE_NAMES = ", ".join(f"{common_pb2.FindingState.Name(v)} ({v})" for v in sorted(_PB_TO_STATE))
_ENCODINGS = {v: common_pb2.ImageEncoding.Name(v) for v in common_pb2.ImageEncoding.values()}
_FORMATS = {batch_pb2.BATCH_FORMAT_UNSPECIFIED: "png", batch_pb2.BATCH_FORMAT_PNG: "png",
            batch_pb2.BATCH_FORMAT_PNG16: "png16", batch_pb2.BATCH_FORMAT_DICOM: "dicom",
            batch_pb2.BATCH_FORMAT_NPZ: "npz", batch_pb2.BATCH_FORMAT_WEBDATASET: "webdataset"}


# ---- conversions ------------------------------------------------------------------------------
def condition_from_pb(pb: common_pb2.Condition | None) -> Condition | None:
    """Typed fields + ``by_name`` (names/aliases) + ``no_finding`` -> Condition. Unknown names -> ConditionError."""
    if pb is None:
        return None
    states: dict[str, FindingState] = {}
    for f in FINDINGS:
        v = getattr(pb, f)
        if v not in _PB_TO_STATE:
            raise ConditionError(f"invalid state {v} for finding {f!r}; use {_STATE_NAMES}")
        if v != common_pb2.FINDING_STATE_UNSPECIFIED:
            states[f] = _PB_TO_STATE[v]
    no_finding = bool(pb.no_finding)
    for name, v in pb.by_name.items():
        key = canonical_finding(name)  # ConditionError names an unknown finding
        if v not in _PB_TO_STATE:
            raise ConditionError(f"invalid state {v} for finding {name!r} in by_name; use {_STATE_NAMES}")
        st = _PB_TO_STATE[v]
        if key == NO_FINDING:
            no_finding = no_finding or st == FindingState.PRESENT
            continue
        if st == FindingState.UNSPECIFIED:
            continue
        if key in states and states[key] != st:
            raise ConditionError(f"finding {key!r} given twice with different states")
        states[key] = st
    data: dict[str, Any] = {k: s.value for k, s in states.items()}
    if no_finding:
        data[NO_FINDING] = True
    try:
        return Condition(**data)
    except ValidationError as e:  # the model's validator raised ConditionError (e.g. no_finding + a present finding)
        raise ConditionError("invalid condition: " + _pydantic_message(e)) from None


def condition_to_pb(c: Condition) -> common_pb2.Condition:
    return common_pb2.Condition(**{f: _STATE_TO_PB[s] for f, s in c.states().items()})


def params_from_pb(pb: common_pb2.GenerationParams | None) -> GenerationParams:
    if pb is None:
        return GenerationParams()
    kw = {}
    for f in ("steps", "sampler", "guidance", "truncation", "resolution"):
        if pb.HasField(f):
            kw[f] = getattr(pb, f)
    try:
        return GenerationParams(**kw)
    except ValidationError as e:  # pydantic bounds, unknown sampler, NaN
        raise InvalidArgument("invalid generation params: " + _pydantic_message(e, "params")) from None


def _pydantic_message(e: ValidationError, prefix: str = "") -> str:
    """'params.steps: Input should be less than or equal to 1000; ...' (no input echo, no docs URL)."""
    parts = []
    for err in e.errors(include_url=False, include_input=False):
        loc = ".".join(str(x) for x in (prefix, *err.get("loc", ())) if x != "")
        msg = str(err.get("msg", "invalid"))
        for p in ("Value error, ", "Assertion failed, "):
            if msg.startswith(p):
                msg = msg[len(p):]
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) or "invalid value"


def check_encoding(encoding: int) -> int:
    """The ImageEncoding of a request, or INVALID_ARGUMENT for a value the enum does not have."""
    if encoding not in _ENCODINGS:
        raise InvalidArgument(f"unknown image encoding {encoding}; use one of "
                              + ", ".join(f"{n} ({v})" for v, n in sorted(_ENCODINGS.items())))
    return encoding


def encode_pb_image(img: np.ndarray, encoding: int, prov: Provenance | None) -> tuple[int, bytes]:
    if encoding == common_pb2.IMAGE_ENCODING_FLOAT32:
        return encoding, np.ascontiguousarray(img, dtype="<f4").tobytes()
    from services.common.codecs.png import encode_png

    if encoding == common_pb2.IMAGE_ENCODING_PNG8:
        return encoding, encode_png(img, prov, bit_depth=8)
    return common_pb2.IMAGE_ENCODING_PNG16, encode_png(img, prov, bit_depth=16)


def decode_pb_image(msg: common_pb2.GeneratedImage) -> np.ndarray:
    """GeneratedImage -> float32 (H, W) in [0, 1] (clients use this)."""
    if msg.encoding == common_pb2.IMAGE_ENCODING_FLOAT32:
        return np.frombuffer(msg.data, dtype="<f4").reshape(msg.height, msg.width).astype(np.float32)
    from services.common.codecs.png import decode_png

    return decode_png(msg.data)[0]


def job_to_pb(rec: JobRecord) -> common_pb2.Job:
    return common_pb2.Job(
        job_id=rec.job_id, kind=rec.kind, state=_JOB_STATE[rec.state], done=rec.done, total=rec.total,
        batch_id=rec.batch_id or "", error=rec.error or "", created=rec.created, updated=rec.updated,
        request_json=json.dumps(rec.request, sort_keys=True),
    )


# ---- the API ----------------------------------------------------------------------------------
class GrpcApi:
    def __init__(self, platform: Platform, auth: ApiKeyAuth | None = None):
        self.p = platform
        self.auth = auth or platform.auth

    def authenticate(self, name: str, metadata, peer: str = "", request=None) -> Caller:
        """The caller of RPC ``name``: API key -> Caller, then its scope and rate (auth.OPERATION_SCOPES); and
        the request's size against ``limits.max_request_bytes`` (the REST body limit)."""
        caller = self.auth.authenticate_grpc(metadata, peer)
        try:
            self.auth.authorize(caller, name)
        except Forbidden:
            if self.auth.should_audit_denial(caller, name):
                self.p.audit.record("auth.denied", caller.key_id, "denied", peer, operation=name)
            raise
        limit = self.p.limits.max_request_bytes
        if request is not None and request.ByteSize() > limit:
            raise TooLarge(f"request message of {request.ByteSize()} bytes exceeds the limit of {limit} bytes")
        return caller

    # GeneratorService
    async def ListModels(self, request, caller: Caller = LOCAL):
        out = generator_pb2.ListModelsResponse()
        for info in await self.p.model_infos():
            out.models.append(generator_pb2.ModelInfo(
                model_id=info.model_id, family=info.family, resolution=info.resolution, model_hash=info.model_hash,
                text_conditioned=info.text_conditioned, description=info.description or "", card=info.card or "",
                backend=info.backend or "", device=info.device or "", is_default=info.is_default,
            ))
        return out

    async def _plan(self, request, limit: int, what: str, screen: str = "off"):
        cond = condition_from_pb(request.condition) if request.HasField("condition") else None
        return await self.p.plan(request.model_id, cond, request.prompt, int(request.count or 0), int(request.seed),
                                 params_from_pb(request.params) if request.HasField("params") else None, limit, what,
                                 screen=screen)

    def _image_pb(self, plan, index: int, img: np.ndarray, encoding: int) -> common_pb2.GeneratedImage:
        enc, data = encode_pb_image(img, encoding, plan.provenance(index))
        return common_pb2.GeneratedImage(
            index=index, seed=plan.seeds[index], condition=condition_to_pb(plan.conditions[index]),
            prompt=plan.prompt or "", width=int(img.shape[1]), height=int(img.shape[0]), encoding=enc, data=data,
            model_id=plan.model_id, backend=plan.model.backend,
        )

    async def Generate(self, request, caller: Caller = LOCAL):
        check_encoding(request.encoding)
        plan = await self._plan(request, self.p.limits.max_inline_images,
                                "inline generation (use StreamGenerate or CreateBatch for more)")
        images = await self.p.generate(plan, caller)
        return generator_pb2.GenerateResponse(
            images=[self._image_pb(plan, i, images[i], request.encoding) for i in range(len(images))])

    async def StreamGenerate(self, request, caller: Caller = LOCAL) -> AsyncIterator[common_pb2.GeneratedImage]:
        check_encoding(request.encoding)
        plan = await self._plan(request, self.p.limits.max_batch_images, "one streamed request")
        async for first, chunk, res in self.p.generate_stream(plan, caller):
            for j in range(len(chunk)):
                yield self._image_pb(plan, first + j, res.images[j], request.encoding)

    async def Ready(self, request, caller: Caller = LOCAL):
        comps = await self.p.readiness()
        return generator_pb2.ReadyResponse(ready=all(v == "ok" for v in comps.values()), components=comps)

    # BatchService
    async def CreateBatch(self, request, caller: Caller = LOCAL):
        fmt = _FORMATS.get(request.format)
        if fmt is None:
            raise InvalidArgument(f"unknown batch format {request.format}; use one of "
                                  + ", ".join(f"{batch_pb2.BatchFormat.Name(v)} ({v})" for v in sorted(_FORMATS)))
        plan = await self._plan(request, self.p.limits.max_batch_images, "one batch", screen=request.screen or "off")
        return job_to_pb(await self.p.create_batch_job(plan, fmt, caller))

    async def GetJob(self, request, caller: Caller = LOCAL):
        return job_to_pb(await self.p.get_job(request.job_id, caller))

    async def ListJobs(self, request, caller: Caller = LOCAL):
        kind = request.kind or None
        if kind not in (None, "batch", "score", "evaluation"):
            raise InvalidArgument(f"unknown job kind {request.kind!r}; use batch, score or evaluation")
        return common_pb2.ListJobsResponse(jobs=[job_to_pb(j) for j in await self.p.list_jobs(kind, caller)])

    async def WatchJob(self, request, caller: Caller = LOCAL) -> AsyncIterator[common_pb2.Job]:
        async for rec in self.p.watch_job(request.job_id, caller):
            yield job_to_pb(rec)

    @staticmethod
    def _batch_pb(man, with_images: bool) -> batch_pb2.Batch:
        out = batch_pb2.Batch(batch_id=man.batch_id, model_id=man.model_id, model_hash=man.model_hash,
                              backend=man.backend, format=man.format, created=man.created, count=man.count,
                              params_json=json.dumps(man.params, sort_keys=True),
                              screening_json=man.screening.model_dump_json() if man.screening is not None else "")
        if with_images:
            for r in man.images:
                entry = batch_pb2.ImageEntry(index=r.index, file=r.file, member=r.member or "", seed=r.seed,
                                             condition=condition_to_pb(r.condition), prompt=r.prompt or "",
                                             sha256=r.sha256)
                if r.near_copy is not None:
                    entry.near_copy = bool(r.near_copy)
                out.images.append(entry)
        return out

    async def ListBatches(self, request, caller: Caller = LOCAL):
        return batch_pb2.ListBatchesResponse(batches=[self._batch_pb(b, False) for b in await self.p.list_batches(caller)])

    async def GetBatch(self, request, caller: Caller = LOCAL):
        return self._batch_pb(await self.p.get_batch(request.batch_id, caller), True)

    async def DeleteBatch(self, request, caller: Caller = LOCAL):
        await self.p.delete_batch(request.batch_id, caller)
        return batch_pb2.DeleteBatchResponse(batch_id=request.batch_id, deleted=True)

    async def StreamBatchImages(self, request, caller: Caller = LOCAL) -> AsyncIterator[common_pb2.GeneratedImage]:
        check_encoding(request.encoding)
        man = await self.p.get_batch(request.batch_id, caller)
        it = self.p.iter_images(man.batch_id)
        done = object()
        while True:
            item = await asyncio.to_thread(next, it, done)
            if item is done:
                return
            rec, img = item
            enc, data = encode_pb_image(img, request.encoding, man.provenance(rec))
            yield common_pb2.GeneratedImage(index=rec.index, seed=rec.seed, condition=condition_to_pb(rec.condition),
                                            prompt=rec.prompt or "", width=int(img.shape[1]), height=int(img.shape[0]),
                                            encoding=enc, data=data, model_id=man.model_id, backend=man.backend)

    # MetricsService
    async def ListReferences(self, request, caller: Caller = LOCAL):
        return metrics_pb2.ListReferencesResponse(references=await self.p.references())

    async def CreateScore(self, request, caller: Caller = LOCAL):
        rec = await self.p.create_score_job(request.batch_id, request.reference or None, list(request.metrics) or None,
                                            request.extractor or None, caller)
        return job_to_pb(rec)

    async def GetScore(self, request, caller: Caller = LOCAL):
        """A finished scoring job's result; a failed one is a result too (state FAILED, its error, no scores),
        as over REST. Still queued or running: FAILED_PRECONDITION (``Platform.score_result``)."""
        return score_to_pb(await self.p.score_result(request.job_id, caller))

    async def ListEvaluationKinds(self, request, caller: Caller = LOCAL):
        return metrics_pb2.ListEvaluationKindsResponse(kinds=[
            metrics_pb2.EvaluationKind(kind=k["kind"], summary=k["summary"], needs_dataset=k["needs_dataset"],
                                       options_schema_json=json.dumps(k["options"], sort_keys=True))
            for k in self.p.evaluation_kinds()])

    async def ListDatasets(self, request, caller: Caller = LOCAL):
        return metrics_pb2.ListDatasetsResponse(datasets=self.p.datasets())

    async def CreateEvaluation(self, request, caller: Caller = LOCAL):
        options: Any = {}
        if request.options_json.strip():
            try:
                options = json.loads(request.options_json)
            except ValueError as e:
                raise InvalidArgument(f"options_json is not JSON: {e.msg} at position {e.pos}") from None
            if not isinstance(options, dict):
                raise InvalidArgument("options_json must be a JSON object")
        rec = await self.p.create_evaluation_job(list(request.batch_ids), request.kind, request.dataset or None, options,
                                                 caller)
        return job_to_pb(rec)

    async def GetEvaluation(self, request, caller: Caller = LOCAL):
        return evaluation_to_pb(await self.p.evaluation_result(request.job_id, caller))


def stamp_to_pb(stamp: dict | str | None) -> metrics_pb2.ExtractorStamp:
    """A result's extractor stamp (``{name, weights_sha256, preprocessing, dtype}``; a bare name) -> protobuf.
    The one reader of the stamp's weights hash: ``weights_sha256`` (``weights_hash`` in job records written
    before the stamp had one key name)."""
    ext = {"name": stamp} if isinstance(stamp, str) else dict(stamp or {})
    prep = ext.get("preprocessing", "")
    return metrics_pb2.ExtractorStamp(
        name=str(ext.get("name", "")), weights_hash=str(ext.get("weights_sha256") or ext.get("weights_hash") or ""),
        preprocessing=prep if isinstance(prep, str) else json.dumps(prep, sort_keys=True),
        dtype=str(ext.get("dtype", "")))


def score_to_pb(rec: JobRecord) -> metrics_pb2.ScoreResult:
    """A finished scoring job -> ScoreResult: its state and error, and (when it succeeded) the scores."""
    res = dict(rec.result or {})
    out = metrics_pb2.ScoreResult(
        job_id=rec.job_id, batch_id=rec.batch_id or str(rec.request.get("batch_id", "")),
        reference=str(rec.request.get("reference", "")), extractor=stamp_to_pb(res.get("extractor")),
        n_real=int(res.get("n_real", 0) or 0), n_synthetic=int(res.get("n_synthetic", 0) or 0),
        result_json=json.dumps(res, sort_keys=True, default=str) if rec.result is not None else "",
        state=_JOB_STATE[rec.state], error=rec.error or "",
    )
    for s in res.get("scores", []) or []:
        sc = metrics_pb2.Score(name=str(s.get("name")), value=float(s.get("value", float("nan"))))
        for k in ("std", "ci_low", "ci_high"):
            if s.get(k) is not None:
                setattr(sc, k, float(s[k]))
        out.scores.append(sc)
    return out


def evaluation_to_pb(rec: JobRecord) -> metrics_pb2.EvaluationResult:
    """A finished evaluation job -> EvaluationResult: state, error, headline numbers and the full JSON."""
    res = dict(rec.result or {})
    out = metrics_pb2.EvaluationResult(
        job_id=rec.job_id, batch_ids=[str(b) for b in rec.request.get("batch_ids", [])],
        kind=str(rec.request.get("kind", "")),
        state=_JOB_STATE[rec.state], error=rec.error or "",
        result_json=json.dumps(res, sort_keys=True, default=str) if rec.result is not None else "")
    for name, v in (res.get("headline") or {}).items():
        h = metrics_pb2.Headline(name=str(name))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            h.value = float(v)
        elif v is not None:
            h.text = str(v)
        out.headline.append(h)
    return out


__all__ = ["GrpcApi", "evaluation_to_pb", "condition_from_pb", "condition_to_pb", "params_from_pb", "check_encoding", "encode_pb_image",
           "decode_pb_image", "job_to_pb", "stamp_to_pb", "score_to_pb"]
