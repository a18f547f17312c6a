"""The gateway's transport-neutral core: validation, chunked generation, jobs, store access, scoring.

``rest.py`` (FastAPI) and ``grpc_api.py`` (gRPC servicer) are thin translations onto :class:`Platform`, so both
APIs have the same rules and the same errors (see ``errors.py``).

Seeds: image ``i`` of a request with seed ``s`` gets seed ``s + i``; every stored image records its seed.
Generation is split into chunks of at most the generator's ``max_batch_size`` images, a few chunks are kept
in flight per request (so the replica's ``@serve.batch`` queue never runs dry), and results are consumed in
order.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
import zipfile
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

import numpy as np

from services.common.config import Settings
from services.common.findings import Condition
from services.common.logging import get_logger
from services.common.store import BatchStore, Manifest
from services.generator.base import GenerationParams
from services.generator.deployment import ChunkResult, GenChunk

from . import prometheus as m
from .clients import Generators, Scorer
from .errors import InvalidArgument, NotFound, NotReady, Unavailable, api_error
from .audit import AuditLog
from .auth import LOCAL, ApiKeyAuth, Caller
from .jobs import JobHandle, JobManager, JobRecord, JobState, LostLease, Runner
from .limits import check_count, check_params

log = get_logger(__name__)

STORED_FORMATS = ("png", "png16", "dicom", "npz", "webdataset")
DEFAULT_REFERENCE = "nih-cxr64"


@dataclass
class GenPlan:
    """A validated generation request: one condition (and prompt) per image, seeds ``seed + i``."""

    model_id: str
    info: dict
    conditions: list[Condition]
    seeds: list[int]
    prompts: list[str | None] | None
    params: GenerationParams
    prompt: str | None = None
    condition: Condition | None = None
    #: ``params`` as the model applies them, its defaults filled in (recorded in batch manifests)
    resolved_params: dict | None = None

    def recorded_params(self) -> dict:
        """What provenance and manifests record: the resolved params when known, else those sent."""
        return dict(self.resolved_params) if self.resolved_params is not None else self.params.model_dump(exclude_none=True)

    @property
    def count(self) -> int:
        return len(self.seeds)

    def request_dict(self) -> dict:
        return {
            "model": self.model_id, "count": self.count, "seed": self.seeds[0] if self.seeds else 0,
            "condition": (self.condition or Condition()).to_json_dict(), "prompt": self.prompt,
            "params": self.params.model_dump(exclude_none=True),
        }


class Platform:
    def __init__(self, generators: Generators, scorer: Scorer | None, store: BatchStore, settings: Settings,
                 jobs_dir=None, default_model: str | None = None, window: int = 4,
                 chunk_size: int | None = None, auth: ApiKeyAuth | None = None, audit: AuditLog | None = None):
        self.generators = generators
        self.scorer = scorer
        self.store = store
        self.settings = settings
        self.limits = settings.limits
        self.window = max(1, int(window))
        self.chunk_size = int(chunk_size or settings.serve.generator_max_batch_size)
        ids = generators.model_ids()
        wanted = default_model or settings.default_model
        self.default_model = wanted if wanted in ids else (ids[0] if ids else wanted)
        self._infos: dict[str, dict] = {}
        self._resolved: dict[tuple[str, GenerationParams], dict] = {}
        self._finished_jobs: set[str] = set()
        self.auth = auth or ApiKeyAuth(settings.api_keys, settings.security)
        self.audit = audit if audit is not None else AuditLog(settings.resolved_audit_log)
        self.jobs = JobManager(jobs_dir, settings.limits.max_concurrent_jobs, on_change=self._job_changed,
                               settings=settings.jobs,
                               resumers={"batch": self._resume_batch, "score": self._resume_score})
        self._cleanup_store()
        m.init_labels(ids)
        m.set_job_counts(self.jobs.counts())

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
    def resolve_model(self, model_id: str | None) -> str:
        mid = (model_id or "").strip() or self.default_model
        if mid not in self.generators.model_ids():
            from .errors import quoted

            raise InvalidArgument(
                f"unknown model {quoted(mid)}; this platform serves: "
                f"{', '.join(sorted(self.generators.model_ids())) or '(none)'} (GET /v1/models)"
            )
        return mid

    async def model_info(self, model_id: str) -> dict:
        if model_id not in self.generators.model_ids():
            raise NotFound(f"model {model_id!r} not found; this platform serves: {', '.join(sorted(self.generators.model_ids()))}")
        if model_id not in self._infos:
            info = dict(await self.generators.info(model_id))
            info.pop("replica", None)  # host:pid of one replica: internal
            info["is_default"] = model_id == self.default_model
            self._infos[model_id] = info
        return self._infos[model_id]

    async def model_infos(self) -> list[dict]:
        return [await self.model_info(mid) for mid in sorted(self.generators.model_ids())]

    async def resolve_params(self, model_id: str, params: GenerationParams) -> dict:
        """The model's ``check_params`` + ``resolved_params`` (InvalidArgument naming a param the model's family
        does not use). Both depend only on the model and the params, so successes are cached."""
        key = (model_id, params)
        if key not in self._resolved:
            try:
                resolved = dict(await self.generators.resolve_params(model_id, params))
            except Exception as e:
                raise api_error(e) from e
            if len(self._resolved) >= 1024:
                self._resolved.clear()
            self._resolved[key] = resolved
        return dict(self._resolved[key])

    # ---- planning -----------------------------------------------------------------------------
    async def plan(self, model: str | None, condition: Condition | None, prompt: str | None, count: int,
                   seed: int, params: GenerationParams | None, limit: int, what: str) -> GenPlan:
        from .schemas import MAX_PROMPT_CHARS

        model_id = self.resolve_model(model)
        params = params or GenerationParams()
        count = int(count)
        check_count(count, limit, what)
        check_params(params, self.limits)
        seed = int(seed)
        if seed < 0 or seed + count > 2**63:
            raise InvalidArgument(f"seed must be in [0, 2**63 - count] (image i gets seed + i); got {seed} "
                                  f"for {count} image(s)")
        prompt = (prompt or "").strip() or None
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are accepted")
        info = await self.model_info(model_id)
        resolved = await self.resolve_params(model_id, params)
        prompts: list[str | None] | None = None
        if prompt is not None:
            if condition is not None and condition != Condition():
                raise InvalidArgument("give either a condition or a prompt, not both")
            from services.common.prompts import PromptError, parse_prompt

            if info.get("text_conditioned"):
                try:
                    cond = parse_prompt(prompt)  # recorded with the image; the model reads the raw prompt
                except PromptError:
                    cond = Condition()
                prompts = [prompt] * count
            else:
                try:
                    cond = parse_prompt(prompt)
                except Exception as e:  # PromptError lists what was understood
                    raise InvalidArgument(str(e)) from e
        else:
            cond = condition or Condition()
        return GenPlan(model_id=model_id, info=info, conditions=[cond] * count,
                       seeds=[seed + i for i in range(count)], prompts=prompts, params=params,
                       prompt=prompt, condition=cond, resolved_params=resolved)

    # ---- generation ---------------------------------------------------------------------------
    def _chunks(self, plan: GenPlan, start: int = 0) -> list[GenChunk]:
        c = max(1, min(self.chunk_size, int(plan.info.get("max_batch_size") or self.chunk_size)))
        return [
            GenChunk(conditions=plan.conditions[i:i + c], seeds=plan.seeds[i:i + c], params=plan.params,
                     prompts=plan.prompts[i:i + c] if plan.prompts is not None else None)
            for i in range(start, plan.count, c)
        ]

    async def _call(self, model_id: str, chunk: GenChunk, on_retry=None) -> ChunkResult:
        """One chunk; a replica that died or is unavailable (Serve restarts it) is retried with backoff, up to
        ``jobs.chunk_retries`` times — same seeds, so the same pixels. Model errors are not retried."""
        n = len(chunk)
        js = self.settings.jobs
        attempt = 0
        while True:
            m.QUEUE_DEPTH.labels(model_id).inc(n)
            t0 = time.perf_counter()
            try:
                res = await self.generators.generate(model_id, chunk)
            except Exception as e:
                if attempt >= js.chunk_retries or not self.generators.is_transient(e):
                    raise
                attempt += 1
                delay = min(10.0, js.retry_backoff_s * 2 ** (attempt - 1))
                log.warning("generation chunk failed; retrying", extra={
                    "model": model_id, "attempt": attempt, "error": type(e).__name__, "delay_s": delay})
                m.CHUNK_RETRIES.labels(model_id).inc()
                if on_retry is not None:
                    on_retry()
                await asyncio.sleep(delay)
                continue
            finally:
                m.QUEUE_DEPTH.labels(model_id).dec(n)
            m.record_chunk(model_id, chunk.conditions, res.stats, time.perf_counter() - t0)
            return res

    async def stream(self, plan: GenPlan, start: int = 0,
                     on_retry=None) -> AsyncIterator[tuple[int, GenChunk, ChunkResult]]:
        """Yield ``(first_index, chunk, result)`` in order from image ``start`` on, keeping ``window`` chunks in
        flight. Chunk boundaries are counted from ``start``; pixels never depend on them."""
        chunks = self._chunks(plan, start)
        pending: deque[tuple[int, GenChunk, asyncio.Task]] = deque()
        nxt = 0

        def launch() -> None:
            nonlocal nxt, start
            ch = chunks[nxt]
            pending.append((start, ch, asyncio.ensure_future(self._call(plan.model_id, ch, on_retry))))
            start += len(ch)
            nxt += 1

        try:
            while nxt < len(chunks) and len(pending) < self.window:
                launch()
            while pending:
                first, ch, task = pending.popleft()
                res = await task
                if nxt < len(chunks):
                    launch()
                yield first, ch, res
        finally:
            for _, _, task in pending:
                task.cancel()

    def admit(self, plan: GenPlan, caller: Caller, action: str) -> None:
        """Charge the plan's images to the caller's quota (429 when spent) and audit the request."""
        self.auth.charge_images(caller, plan.count)
        self.audit.record(action, caller.key_id, "accepted", caller.peer, model=plan.model_id, count=plan.count)

    async def generate(self, plan: GenPlan, caller: Caller = LOCAL) -> np.ndarray:
        """Inline generation: the images in memory (at most ``limits.max_inline_images``)."""
        self.admit(plan, caller, "generate")
        try:
            parts = [res.images async for _, _, res in self.stream(plan)]
        except BaseException:
            self.auth.refund_images(caller, plan.count)  # nothing was delivered
            raise
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0, 0), np.float32)

    async def generate_stream(self, plan: GenPlan, caller: Caller = LOCAL) -> AsyncIterator[tuple[int, GenChunk, ChunkResult]]:
        """Streamed generation (gRPC StreamGenerate): chunks in order as they are made."""
        self.admit(plan, caller, "generate")
        async for item in self.stream(plan):
            yield item

    # ---- batch jobs ---------------------------------------------------------------------------
    def create_batch_job(self, plan: GenPlan, fmt: str, caller: Caller = LOCAL) -> JobRecord:
        if fmt not in STORED_FORMATS:
            raise InvalidArgument(f"unknown format {fmt!r}; use one of {', '.join(STORED_FORMATS)}")
        request = {**plan.request_dict(), "format": fmt}
        self.auth.charge_images(caller, plan.count)
        try:
            rec = self.jobs.submit("batch", request, plan.count, self._batch_runner(plan, fmt), key_id=caller.key_id)
        except BaseException:
            self.auth.refund_images(caller, plan.count)
            raise
        self.audit.record("batch.create", caller.key_id, "accepted", caller.peer, model=plan.model_id,
                          count=plan.count, job_id=rec.job_id)
        return rec

    def _batch_runner(self, plan: GenPlan, fmt: str) -> Runner:
        """Generate and store ``plan`` as one batch, resumable: every chunk is made durable in the batch's
        staging folder before progress is reported, so a resumed job continues after the last stored image."""
        params = plan.recorded_params()

        async def run(handle: JobHandle) -> dict:
            rec = handle.record
            writer = None
            if rec.staging_batch_id:
                writer = await asyncio.to_thread(self.store.resume, rec.staging_batch_id)
            if writer is None:
                writer = await asyncio.to_thread(
                    self.store.create, plan.model_id, plan.info.get("model_hash", ""), plan.info.get("backend", ""),
                    fmt, params, created_by=rec.key_id,
                )
                rec.staging_batch_id = writer.batch_id

            def retried() -> None:
                rec.retries += 1

            try:
                handle.save()  # the staging batch id is on record before the first image
                handle.progress(writer.count)
                async for first, chunk, res in self.stream(plan, start=writer.count, on_retry=retried):
                    handle.check_lease()  # never write beside a gateway that took this job over
                    await asyncio.to_thread(_add_chunk, writer, chunk, res, plan.prompt)
                    await asyncio.to_thread(writer.sync)
                    handle.progress(first + len(chunk))
                handle.check_lease()
                manifest = await asyncio.to_thread(writer.commit)
            except (asyncio.CancelledError, LostLease):
                await asyncio.to_thread(writer.suspend)  # keep what is stored: the next gateway resumes it
                raise
            except BaseException:
                await asyncio.to_thread(writer.abort)  # all or nothing: no half-stored batch
                raise
            self.audit.record("batch.stored", rec.key_id, "ok", "", model=plan.model_id, count=manifest.count,
                              job_id=rec.job_id, batch_id=manifest.batch_id)
            return {"batch_id": manifest.batch_id}

        return run

    def _resume_batch(self, rec: JobRecord) -> Runner:
        """The runner that continues an orphaned batch job from its record (the plan is rebuilt from the
        request it recorded: same model, seeds, condition or prompt, params and format)."""

        async def run(handle: JobHandle) -> dict:
            req = rec.request
            cond = Condition.model_validate(req.get("condition") or {})
            plan = await self.plan(req.get("model"), None if req.get("prompt") else cond, req.get("prompt"),
                                   int(req["count"]), int(req.get("seed", 0)),
                                   GenerationParams.model_validate(req.get("params") or {}),
                                   self.limits.max_batch_images, "one batch")
            return await self._batch_runner(plan, str(req.get("format", "png")))(handle)

        return run

    # ---- scoring ------------------------------------------------------------------------------
    async def references(self) -> list[str]:
        if self.scorer is None:
            return []
        return list(await self.scorer.references())

    async def create_score_job(self, batch_id: str, reference: str | None, metrics: list[str] | None,
                               extractor: str | None, caller: Caller = LOCAL) -> JobRecord:
        from services.metrics.api import check_request
        from services.metrics.errors import MetricsError

        from .errors import quoted

        if self.scorer is None:
            raise Unavailable("this platform runs without a metrics deployment")
        try:  # metric and extractor names: the metrics layer's own registry, checked before anything is queued
            metrics, extractor = check_request(["fid"] if metrics is None else list(metrics), extractor or "inception")
        except MetricsError as e:
            raise InvalidArgument(str(e)) from None
        manifest = await self.get_batch(batch_id, caller)
        reference = (reference or DEFAULT_REFERENCE).strip()
        refs = await self.references()
        if reference not in refs:
            raise InvalidArgument(f"unknown reference {quoted(reference)}; registered references: "
                                  f"{', '.join(refs) or '(none)'} (GET /v1/references)")
        request = {"batch_id": manifest.batch_id, "reference": reference, "metrics": metrics, "extractor": extractor}
        rec = self.jobs.submit("score", request, manifest.count, self._score_runner(request, manifest.count),
                               key_id=caller.key_id)
        self.audit.record("score.create", caller.key_id, "accepted", caller.peer, batch_id=manifest.batch_id,
                          reference=reference, job_id=rec.job_id)
        return rec

    def _score_runner(self, request: dict, count: int) -> Runner:
        batch_id, reference = request["batch_id"], request["reference"]
        metrics, extractor = list(request["metrics"]), request["extractor"]

        async def run(handle: JobHandle) -> dict:
            t0 = time.perf_counter()
            result = await self.scorer.score(batch_id, reference, metrics, extractor)
            m.SCORING_LATENCY.labels(reference, extractor).observe(time.perf_counter() - t0)
            handle.progress(count)
            return {"batch_id": batch_id, **{k: v for k, v in dict(result).items() if k != "batch_id"}}

        return run

    def _resume_score(self, rec: JobRecord) -> Runner:
        """Scoring has no partial state worth keeping: an orphaned scoring job runs again."""
        return self._score_runner(rec.request, rec.total)

    # ---- jobs ---------------------------------------------------------------------------------
    def _job(self, job_id: str, caller: Caller) -> JobRecord:
        rec = self.jobs.get(job_id)
        if not caller.may_see(rec.key_id):
            raise NotFound(f"job {job_id} not found")
        return rec

    def get_job(self, job_id: str, caller: Caller = LOCAL) -> JobRecord:
        return self._job(job_id, caller)

    def list_jobs(self, kind: str | None = None, caller: Caller = LOCAL) -> list[JobRecord]:
        """The caller's jobs (every job for admin keys and when authentication is off), newest first."""
        return [j for j in self.jobs.list(kind) if caller.may_see(j.key_id)]

    async def watch_job(self, job_id: str, caller: Caller = LOCAL) -> AsyncIterator[JobRecord]:
        self._job(job_id, caller)
        async for rec in self.jobs.watch(job_id):
            yield rec

    def score_result(self, job_id: str, caller: Caller = LOCAL) -> JobRecord:
        rec = self._job(job_id, caller)
        if rec.kind != "score":
            raise NotFound(f"job {job_id} is a {rec.kind} job, not a scoring job")
        if rec.state == JobState.FAILED:
            return rec
        if not rec.state.finished:
            raise NotReady(f"scoring job {job_id} is {rec.state.value} ({rec.done}/{rec.total}); poll again")
        return rec

    def _job_changed(self, rec: JobRecord) -> None:
        m.set_job_counts(self.jobs.counts())
        if rec.state.finished and rec.job_id not in self._finished_jobs:
            self._finished_jobs.add(rec.job_id)
            m.JOBS_FINISHED.labels(rec.kind, rec.state.value).inc()

    # ---- store --------------------------------------------------------------------------------
    async def _store(self, fn, *args):
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as e:
            raise api_error(e) from e

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


def _add_chunk(writer, chunk: GenChunk, res: ChunkResult, prompt: str | None) -> None:
    for j in range(len(chunk)):
        p = chunk.prompts[j] if chunk.prompts is not None else prompt  # recorded even for class-conditional models
        writer.add(res.images[j], chunk.seeds[j], chunk.conditions[j], prompt=p)


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
