"""The gateway's transport-neutral core (the "serving class"): callers, quotas, audit, jobs, store access.

``rest.py`` (FastAPI) and ``grpc_api.py`` (gRPC servicer) are thin translations onto :class:`Platform`, so both
APIs have the same rules and the same errors (see ``errors.py``). Generation — planning, chunking, streaming,
storing a batch — is the generator layer's :class:`~services.generator.generation.GenerationService`, the
same code ``synthrad generate`` runs; this module adds what serving needs around it (who may do what, quotas,
durable jobs that resume, telemetry).
"""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
import zipfile
from typing import AsyncIterator, Iterator

import numpy as np
from pydantic import ValidationError

from services.common.config import Settings
from services.common.findings import Condition
from services.common.logging import get_logger
from services.common.store import BATCH_FORMATS, BatchStore, Manifest
from services.generator.base import GenerationParams
from services.generator.chunks import ChunkResult, GenChunk
from services.metrics.summary import ScoreSummary
from services.generator.generation import (GenerationPlan, GenerationRequest, GenerationService, Generators,
                                           RetryPolicy)

from . import prometheus as m
from .audit import AuditLog
from .auth import LOCAL, ApiKeyAuth, Caller
from .clients import Scorer
from .errors import InvalidArgument, NotFound, NotReady, Unavailable, api_error, quoted
from .jobs import BatchJobResult, JobHandle, JobManager, JobRecord, JobState, LostLease, Runner
from .schemas import ModelView

log = get_logger(__name__)
#: an evaluation job's progress is reported in these units (its stages differ per kind)
EVALUATION_STEPS = 1000
MAX_EVALUATION_BATCHES = 32


class Platform:
    """The serving layer's use cases over generators, the scorer, the store and the job manager; REST and gRPC
    call these with a :class:`Caller`. Generation itself is :class:`GenerationService` (the CLI's too)."""

    def __init__(self, generators: Generators, scorer: Scorer | None, store: BatchStore, settings: Settings,
                 jobs_dir=None, default_model: str | None = None, window: int = 4,
                 auth: ApiKeyAuth | None = None, audit: AuditLog | None = None, execute_jobs: bool = True,
                 on_submit=None, observer=None, metrics_source=None):
        """``execute_jobs=False`` (the gateway of a Serve application): jobs are recorded in the shared job
        store and run by the jobs deployment (``on_submit`` nudges it); ``observer`` receives the chunk
        telemetry (default: this process's Prometheus metrics); ``metrics_source`` (async, returns the exposition
        bytes) is what ``/metrics`` shows (default: this process's registry)."""
        self._metrics_source = metrics_source
        self.scorer = scorer
        self.store = store
        self.settings = settings
        self.limits = settings.limits
        ids = generators.model_ids()
        self.generation = GenerationService(
            generators, settings.limits, default_model or settings.default_model, window=window,
            retry=RetryPolicy(settings.jobs.chunk_retries, settings.jobs.retry_backoff_s),
            observer=observer or m.ChunkTelemetry(),
            screeners=_screeners(settings))
        self.default_model = self.generation.default_model
        self._finished_jobs: set[str] = set()
        self.auth = auth or ApiKeyAuth(settings.api_keys, settings.security)
        self.audit = audit if audit is not None else AuditLog(settings.resolved_audit_log)
        self.jobs = JobManager(jobs_dir, settings.limits.max_concurrent_jobs, on_change=self._job_changed,
                               settings=settings.jobs,
                               resumers={"batch": self._resume_batch, "score": self._resume_score,
                                         "evaluation": self._resume_evaluation},
                               execute=execute_jobs, on_submit=on_submit, on_finishing=self._job_finishing)
        if execute_jobs:
            self._cleanup_store()
        m.init_labels(ids)
        if execute_jobs:  # a gateway's counts come from the telemetry deployment (never a store scan at start)
            m.set_job_counts(self.jobs.counts())

    @property
    def generators(self) -> Generators:
        return self.generation.generators

    @generators.setter
    def generators(self, value: Generators) -> None:
        self.generation.generators = value

    def _cleanup_store(self) -> None:
        """Remove leftovers of crashed batch writes, except those a job will resume."""
        keep = {r.staging_batch_id for r in self.jobs.list() if r.staging_batch_id and not r.state.finished}
        try:
            removed = self.store.cleanup_stale(self.settings.jobs.stale_temp_s, keep=keep)
        except Exception as e:  # noqa: BLE001 - start anyway; the leftovers are invisible to readers
            log.warning("could not clean stale batch folders", extra={"error": type(e).__name__})
        else:
            if removed:
                log.info("removed stale batch folders", extra={"count": removed})

    # ---- models -------------------------------------------------------------------------------
    async def model_info(self, model_id: str) -> ModelView:
        if model_id not in self.generators.model_ids():
            raise NotFound(f"model {quoted(model_id)} not found; this platform serves: "
                           f"{', '.join(sorted(self.generators.model_ids()))}")
        served = await _api(self.generation.model_info(model_id))
        return ModelView.of(served, is_default=model_id == self.default_model)

    async def model_infos(self) -> list[ModelView]:
        return [await self.model_info(mid) for mid in sorted(self.generators.model_ids())]

    # ---- planning -----------------------------------------------------------------------------
    async def plan(self, model: str | None, condition: Condition | None, prompt: str | None, count: int,
                   seed: int, params: GenerationParams | None, limit: int, what: str,
                   screen: str = "off") -> GenerationPlan:
        """The checked plan of one request (InvalidArgument naming what is wrong), at most ``limit`` images;
        ``screen`` (stored batches only): off, or flag / drop near-copies of the model's training images."""
        if screen not in ("off", "flag", "drop"):
            raise InvalidArgument(f"unknown screen {quoted(screen)}; use off, flag or drop")
        try:
            request = GenerationRequest(model=model, condition=condition, prompt=prompt, count=int(count),
                                        seed=int(seed), params=params or GenerationParams(), screen=screen)
        except ValidationError as e:  # the REST/gRPC schemas check the same first; this is the last guard
            raise InvalidArgument(f"invalid generation request: {e.errors()[0]['msg']}") from None
        return await _api(self.generation.plan(request, limit, what))

    # ---- generation ---------------------------------------------------------------------------
    def admit(self, plan: GenerationPlan, caller: Caller, action: str) -> None:
        """Charge the plan's images to the caller's quota (429 when spent) and audit the request."""
        self.auth.charge_images(caller, plan.count)
        self.audit.record(action, caller.key_id, "accepted", caller.peer, model=plan.model_id, count=plan.count)

    async def generate(self, plan: GenerationPlan, caller: Caller = LOCAL) -> np.ndarray:
        """Inline generation: the images in memory (at most ``limits.max_inline_images``)."""
        self.admit(plan, caller, "generate")
        try:
            return await self.generation.generate(plan)
        except BaseException:
            self.auth.refund_images(caller, plan.count)  # nothing was delivered
            raise

    async def generate_stream(self, plan: GenerationPlan,
                              caller: Caller = LOCAL) -> AsyncIterator[tuple[int, GenChunk, ChunkResult]]:
        """Streamed generation (gRPC StreamGenerate): chunks in order as they are made."""
        self.admit(plan, caller, "generate")
        async for item in self.generation.stream(plan, shed=True):
            yield item

    # ---- batch jobs ---------------------------------------------------------------------------
    async def _jobs_call(self, fn, *args, **kwargs):
        """A job-store operation: inline while jobs run here (in memory, and a submit starts a task on this
        loop); in a worker thread on a gateway, whose store may be an object store (never block the loop)."""
        if self.jobs.execute:
            return fn(*args, **kwargs)
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except OSError as e:
            raise Unavailable(f"the job store did not answer ({e.strerror or type(e).__name__}); retry in a "
                              "moment") from None

    async def create_batch_job(self, plan: GenerationPlan, fmt: str, caller: Caller = LOCAL) -> JobRecord:
        if fmt not in BATCH_FORMATS:
            raise InvalidArgument(f"unknown format {quoted(fmt)}; use one of {', '.join(BATCH_FORMATS)}")
        request = {**plan.record(), "format": fmt}
        self.auth.charge_images(caller, plan.count)
        try:
            rec = await self._jobs_call(self.jobs.submit, "batch", request, plan.count,
                                        self._batch_runner(plan, fmt), key_id=caller.key_id)
        except BaseException:
            self.auth.refund_images(caller, plan.count)
            raise
        self.audit.record("batch.create", caller.key_id, "accepted", caller.peer, model=plan.model_id,
                          count=plan.count, job_id=rec.job_id)
        return rec

    def _batch_runner(self, plan: GenerationPlan, fmt: str) -> Runner:
        """Generate and store ``plan`` as one batch, resumable: the staging batch id is on the job's record
        before the first image, and every chunk is durable before progress is reported, so a resumed job
        continues after the last stored image."""

        async def run(handle: JobHandle) -> BatchJobResult:
            rec = handle.record
            writer = await self.generation.open_batch(plan, self.store, fmt, created_by=rec.key_id,
                                                      resume_id=rec.staging_batch_id)
            rec.staging_batch_id = writer.batch_id
            handle.save()

            def retried() -> None:
                rec.retries += 1

            served_by: set[str] = set()

            def made(res: ChunkResult) -> None:
                served_by.add(res.stats.replica)
                rec.replicas = len(served_by)

            manifest = await self.generation.store(
                plan, writer, progress=handle.progress, check=handle.check_lease, on_retry=retried,
                suspend_on=(asyncio.CancelledError, LostLease), on_chunk=made)  # suspended: the next run resumes it
            self.audit.record("batch.stored", rec.key_id, "ok", "", model=plan.model_id, count=manifest.count,
                              job_id=rec.job_id, batch_id=manifest.batch_id)
            return BatchJobResult(batch_id=manifest.batch_id)

        return run

    def _resume_batch(self, rec: JobRecord) -> Runner:
        """The runner that continues an orphaned batch job from its record (the plan is rebuilt from the
        request it recorded: same model, seeds, condition or prompt, params and format)."""

        async def run(handle: JobHandle) -> BatchJobResult:
            request = GenerationRequest.from_record(rec.request)
            plan = await _api(self.generation.plan(request, self.limits.max_batch_images, "one batch"))
            return await self._batch_runner(plan, str(rec.request.get("format", "png")))(handle)

        return run

    # ---- scoring ------------------------------------------------------------------------------
    async def references(self) -> list[str]:
        if self.scorer is None:
            return []
        return list(await self.scorer.references())

    async def create_score_job(self, batch_id: str, reference: str | None, metrics: list[str] | None,
                               extractor: str | None, caller: Caller = LOCAL) -> JobRecord:
        from services.metrics import defaults
        from services.metrics.api import check_request
        from services.metrics.errors import MetricsError

        if self.scorer is None:
            raise Unavailable("this platform runs without a metrics deployment")
        try:  # metric and extractor names: the metrics layer's own registry, checked before anything is queued
            metrics, extractor = check_request(list(defaults.METRICS) if metrics is None else list(metrics),
                                               extractor or defaults.EXTRACTOR)
        except MetricsError as e:
            raise InvalidArgument(str(e)) from None
        manifest = await self.get_batch(batch_id, caller)
        reference = (reference or self.settings.default_reference).strip()
        refs = await self.references()
        if reference not in refs:
            raise InvalidArgument(f"unknown reference {quoted(reference)}; registered references: "
                                  f"{', '.join(refs) or '(none)'} (GET /v1/references)")
        request = {"batch_id": manifest.batch_id, "reference": reference, "metrics": metrics, "extractor": extractor}
        rec = await self._jobs_call(self.jobs.submit, "score", request, manifest.count,
                                    self._score_runner(request, manifest.count), key_id=caller.key_id)
        self.audit.record("score.create", caller.key_id, "accepted", caller.peer, batch_id=manifest.batch_id,
                          reference=reference, job_id=rec.job_id)
        return rec

    def _score_runner(self, request: dict, count: int) -> Runner:
        batch_id, reference = request["batch_id"], request["reference"]
        metrics, extractor = list(request["metrics"]), request["extractor"]

        async def run(handle: JobHandle) -> ScoreSummary:
            t0 = time.perf_counter()
            result = await self.scorer.score(batch_id, reference, metrics, extractor)
            self.generation.observer.scoring(reference, extractor, time.perf_counter() - t0)
            handle.progress(count)
            return result.model_copy(update={"batch_id": batch_id})

        return run

    def _resume_score(self, rec: JobRecord) -> Runner:
        """Scoring has no partial state worth keeping: an orphaned scoring job runs again."""
        return self._score_runner(rec.request, rec.total)

    # ---- evaluations (utility, conditioning, memorisation, bias, per-finding) ------------------
    def datasets(self) -> list[str]:
        """The labelled real datasets evaluation jobs may read (``settings.datasets``; names only)."""
        return sorted(self.settings.datasets)

    def evaluation_kinds(self) -> list[dict]:
        from services.metrics.evaluation.registry import evaluation_kinds, get_evaluation

        out = []
        for kind in evaluation_kinds():
            ev = get_evaluation(kind)
            schema = ev.options.model_json_schema()
            schema.get("properties", {}).pop("data", None)
            if "required" in schema:
                schema["required"] = [r for r in schema["required"] if r != "data"]
            out.append({"kind": kind, "summary": ev.summary, "needs_dataset": ev.needs_data, "options": schema})
        return out

    def _evaluation_options(self, kind: str, dataset: str | None, options: dict | None) -> tuple[str, dict]:
        """``(kind, options)`` validated by the metrics layer; the ``data`` option comes only from a configured
        dataset name (a request never names a server path)."""
        from services.metrics.errors import MetricsError
        from services.metrics.evaluation.registry import get_evaluation, parse_options

        options = dict(options or {})
        if "data" in options:
            raise InvalidArgument("options.data cannot be sent: name a configured dataset in 'dataset' "
                                  "(GET /v1/datasets)")
        try:
            ev = get_evaluation(kind)
        except MetricsError as e:
            raise InvalidArgument(str(e)) from None
        fields = ev.options.model_fields
        if dataset is not None:
            spec = self.settings.datasets.get(dataset)
            if spec is None:
                raise InvalidArgument(f"unknown dataset {quoted(dataset)}; configured datasets: "
                                      f"{', '.join(self.datasets()) or '(none: set SYNTHRAD_DATASETS)'}")
            if "data" not in fields:
                raise InvalidArgument(f"evaluation {ev.kind!r} reads no dataset; leave 'dataset' out")
            options["data"] = {"path": str(spec.path), "layout": spec.layout, "views": spec.views,
                               "split_by": spec.split_by, "name": dataset}
        elif ev.needs_data:
            raise InvalidArgument(f"evaluation {ev.kind!r} needs a labelled real dataset: name one in 'dataset' "
                                  f"({', '.join(self.datasets()) or 'none configured: set SYNTHRAD_DATASETS'})")
        try:
            parsed = parse_options(ev.kind, options)
        except MetricsError as e:
            raise InvalidArgument(str(e)) from None
        return ev.kind, parsed.model_dump(mode="json")

    async def create_evaluation_job(self, batch_ids: list[str], kind: str, dataset: str | None,
                                    options: dict | None, caller: Caller = LOCAL) -> JobRecord:
        """An evaluation of stored batches of one model (one batch per condition when conditions are compared)."""
        if self.scorer is None:
            raise Unavailable("this platform runs without a metrics deployment")
        ids = list(dict.fromkeys(batch_ids))
        if not 1 <= len(ids) <= MAX_EVALUATION_BATCHES:
            raise InvalidArgument(f"give 1 to {MAX_EVALUATION_BATCHES} batch ids, got {len(ids)}")
        kind, resolved = self._evaluation_options(kind, dataset, options)
        manifests = [await self.get_batch(b, caller) for b in ids]
        models = sorted({m.model_id for m in manifests})
        if len(models) > 1:
            raise InvalidArgument(f"the batches come from different models ({', '.join(models)}); evaluate one "
                                  "model at a time")
        request = {"batch_ids": [m.batch_id for m in manifests], "kind": kind, "dataset": dataset,
                   "options": {k: v for k, v in resolved.items() if k != "data"}}
        rec = await self._jobs_call(self.jobs.submit, "evaluation", request, EVALUATION_STEPS,
                                    self._evaluation_runner(request, resolved), key_id=caller.key_id)
        self.audit.record("evaluation.create", caller.key_id, "accepted", caller.peer,
                          batch_id=",".join(request["batch_ids"]), kind=kind, job_id=rec.job_id)
        return rec

    def _evaluation_runner(self, request: dict, options: dict) -> Runner:
        from services.metrics.evaluation.result import EvaluationResult

        batch_ids, kind = list(request["batch_ids"]), request["kind"]

        async def run(handle: JobHandle) -> EvaluationResult:
            def progress(done: int, total: int, stage: str) -> None:
                handle.progress(int(EVALUATION_STEPS * min(done, total) / max(1, total)))

            data = await self.scorer.evaluate(kind, batch_ids, options, progress)
            return EvaluationResult.model_validate(data)

        return run

    def _resume_evaluation(self, rec: JobRecord) -> Runner:
        """An orphaned evaluation runs again from its request (its options resolved again: the dataset by name)."""
        req = rec.request
        _, resolved = self._evaluation_options(req["kind"], req.get("dataset"), req.get("options"))
        return self._evaluation_runner(req, resolved)

    async def evaluation_result(self, job_id: str, caller: Caller = LOCAL) -> JobRecord:
        return await self._jobs_call(self._finished, job_id, caller, "evaluation", "an evaluation")

    # ---- jobs ---------------------------------------------------------------------------------
    def _job(self, job_id: str, caller: Caller) -> JobRecord:
        rec = self.jobs.get(job_id)
        if not caller.may_see(rec.key_id):
            raise NotFound(f"job {job_id} not found")
        return rec

    async def get_job(self, job_id: str, caller: Caller = LOCAL) -> JobRecord:
        return await self._jobs_call(self._job, job_id, caller)

    async def list_jobs(self, kind: str | None = None, caller: Caller = LOCAL) -> list[JobRecord]:
        """The caller's jobs (every job for admin keys and when authentication is off), newest first."""
        return [j for j in await self._jobs_call(self.jobs.list, kind) if caller.may_see(j.key_id)]

    async def watch_job(self, job_id: str, caller: Caller = LOCAL) -> AsyncIterator[JobRecord]:
        await self._jobs_call(self._job, job_id, caller)
        async for rec in self.jobs.watch(job_id):
            yield rec

    async def score_result(self, job_id: str, caller: Caller = LOCAL) -> JobRecord:
        return await self._jobs_call(self._finished, job_id, caller, "score", "a scoring")

    def _finished(self, job_id: str, caller: Caller, kind: str, what: str) -> JobRecord:
        """A finished job of ``kind`` (a failed one is finished too: its record carries the error); NotReady while
        it is queued or running, NotFound for another kind."""
        rec = self._job(job_id, caller)
        if rec.kind != kind:
            raise NotFound(f"job {job_id} is a {rec.kind} job, not {what} job")
        if rec.state == JobState.FAILED:
            return rec
        if not rec.state.finished:
            raise NotReady(f"{what.split(' ', 1)[1]} job {job_id} is {rec.state.value} ({rec.done}/{rec.total}); "
                           "poll again")
        return rec

    async def metrics_exposition(self) -> bytes:
        """``GET /metrics``: the telemetry deployment's series under Serve (job states counted there, from the
        shared store), else this process's."""
        if self._metrics_source is not None:
            try:
                return await self._metrics_source()
            except Exception as e:  # noqa: BLE001 - the hub is restarting or gone
                raise Unavailable("the telemetry deployment is not answering; retry in a moment") from e
        return m.exposition()[0]

    def _job_changed(self, rec: JobRecord) -> None:
        if self.jobs.execute:
            m.set_job_counts(self.jobs.counts())

    async def _job_finishing(self, rec: JobRecord) -> None:
        """A job's telemetry is delivered before its final record is written (a poller that sees the job
        finished sees its chunks and its finish on ``/metrics`` too)."""
        if rec.job_id not in self._finished_jobs:
            self._finished_jobs.add(rec.job_id)
            self.generation.observer.job_finished(rec.kind, rec.state.value)
        flush = getattr(self.generation.observer, "flush", None)
        if flush is not None:
            await flush()

    # ---- store --------------------------------------------------------------------------------
    async def _store(self, fn, *args):
        return await _api(asyncio.to_thread(fn, *args))

    async def list_batches(self, caller: Caller = LOCAL) -> list[Manifest]:
        """The caller's batches (every batch for admin keys and when authentication is off), newest first."""
        return [b for b in await self._store(self.store.list) if caller.may_see(b.created_by)]

    async def get_batch(self, batch_id: str, caller: Caller = LOCAL) -> Manifest:
        """A batch's manifest; another key's batch is "not found" (its existence is not revealed)."""
        man = await self._store(self.store.get, batch_id)
        if not caller.may_see(man.created_by):
            raise NotFound(f"batch {batch_id} not found")
        return man

    async def delete_batch(self, batch_id: str, caller: Caller = LOCAL) -> None:
        await self.get_batch(batch_id, caller)
        await self._store(self.store.delete, batch_id)
        self.audit.record("batch.delete", caller.key_id, "ok", caller.peer, batch_id=batch_id)

    async def image_bytes(self, batch_id: str, index: int, caller: Caller = LOCAL) -> tuple[str, bytes]:
        man = await self.get_batch(batch_id, caller)
        return await self._store(self.store.image_bytes, batch_id, int(index), man)

    async def read_file(self, batch_id: str, name: str, caller: Caller = LOCAL) -> bytes:
        man = await self.get_batch(batch_id, caller)
        return await self._store(self.store.read_file, batch_id, name, man)

    def iter_images(self, batch_id: str):
        return self.store.iter_images(batch_id)

    async def check_files(self, manifest: Manifest) -> None:
        """Every file of the batch is there (one listing, no reads): checked before a download starts, so a
        batch known to be damaged gets an error status; digests are checked while streaming."""
        await self._store(self.store.verify, manifest.batch_id, False)

    def archive(self, manifest: Manifest, kind: str) -> Iterator[bytes]:
        """The batch as a streamed tar or zip: every file checked against ``manifest`` before its header is
        sent, ``manifest.json`` last. A missing or damaged file raises mid-stream (``BatchDamaged``), so the
        archive never ends properly (no end-of-archive blocks / central directory) and the HTTP response is
        cut without its terminating chunk: the client sees an incomplete download, never a short archive."""
        if kind == "tar":
            return _iter_tar(self.store, manifest)
        if kind == "zip":
            return _iter_zip(self.store, manifest)
        raise InvalidArgument(f"unknown archive type {kind!r}; use tar or zip")

    # ---- health -------------------------------------------------------------------------------
    async def readiness(self, timeout_s: float = 5.0) -> dict[str, str]:
        out: dict[str, str] = {}

        async def probe(name: str, coro) -> None:
            try:
                await asyncio.wait_for(coro, timeout_s)
                out[name] = "ok"
            except Exception as e:  # noqa: BLE001 - reported, not raised; details only in the log
                out[name] = "timeout" if isinstance(e, asyncio.TimeoutError) else "unavailable"
                log.warning("readiness probe failed", extra={"component": name, "error": f"{type(e).__name__}: {e}"[:300]})

        probes = [probe(f"generator:{mid}", self.generators.info(mid)) for mid in self.generators.model_ids()]
        if self.scorer is not None:
            probes.append(probe("metrics", self.scorer.ready()))
        probes.append(probe("store", asyncio.to_thread(self.store.fs.exists, self.store.root)))
        await asyncio.gather(*probes)
        return out

    async def shutdown(self) -> None:
        await self.jobs.shutdown()


def _screeners(settings: Settings):
    """Near-copy screening of stored batches against the models' shipped training-set indexes (built lazily,
    per model, on the first screened request)."""
    from services.metrics.evaluation.screening import screener_factory

    return screener_factory(settings.screening.spaces, settings.screening.quantile)


async def _api(awaitable):
    """``await awaitable`` with the shared layers' errors (store, generator, metrics) as API errors."""
    try:
        return await awaitable
    except Exception as e:
        raise api_error(e) from e


def _iter_tar(store: BatchStore, manifest: Manifest) -> Iterator[bytes]:
    """A tar stream built file by file (never the whole archive in memory); each file is read and checked
    before its header goes out, and the end-of-archive blocks only follow a complete, verified batch."""
    for name, data in store.iter_files(manifest.batch_id, manifest):
        info = tarfile.TarInfo(f"{manifest.batch_id}/{name}")
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        yield info.tobuf(format=tarfile.USTAR_FORMAT)
        yield data
        pad = (-len(data)) % tarfile.BLOCKSIZE
        if pad:
            yield b"\0" * pad
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


class _Sink(io.RawIOBase):
    """Unseekable write-only buffer that ``zipfile`` streams into (data descriptors, no seeking)."""

    def __init__(self):
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def drain(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _iter_zip(store: BatchStore, manifest: Manifest) -> Iterator[bytes]:
    """A zip stream (stored, data descriptors); the central directory is only written after every file was
    read and checked, so a failure mid-way leaves an archive without one (and an incomplete response)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in store.iter_files(manifest.batch_id, manifest):
            with zf.open(zipfile.ZipInfo(f"{manifest.batch_id}/{name}", date_time=time.gmtime()[:6]), "w") as fh:
                fh.write(data)
            chunk = sink.drain()
            if chunk:
                yield chunk
    # on an error the ``with`` still writes a central directory, into the sink only: it is never sent
    tail = sink.drain()
    if tail:
        yield tail
