"""Jobs: batch generation and scoring, run in the background, stored and pollable with progress.

A job is a :class:`JobRecord` (queued -> running -> succeeded | failed) persisted as JSON in a
:class:`~services.gateway.job_store.JobStore` (``<home>/jobs/`` or any fsspec URL, e.g. beside an ``s3://``
batch store), so polling works from any replica sharing that store and a restarted one still answers for old
jobs.

Who runs a job: a manager with ``execute=True`` runs jobs as asyncio tasks in its process (the jobs deployment;
or everything in one process, as the fast tests and embedded use do). A manager with ``execute=False`` (the
gateway of a Serve application) only *submits*: it stores the record queued and unowned, calls ``on_submit``
(which nudges the jobs deployment), and answers queries from the store — it holds no job state, so any number
of gateway replicas answer for any job and losing one loses nothing. An executor takes an unowned record the
way it takes an orphan (below): by claiming it.

Surviving faults: a running job refreshes its record every ``heartbeat_s``. When an executor starts (and on
every heartbeat), a job left queued/running by a process that is gone (same host, dead pid) or whose record went
stale (older than ``lease_s``: another host's executor died) is *orphaned*: the executor claims it (one claim file per
attempt, created with ``O_EXCL``, so two replicas never both take it) and resumes it through the resumer
registered for its kind — batch jobs continue from the images already written (same seeds, same pixels,
one batch at the end); scoring jobs run again. A kind without a resumer is marked failed ("interrupted").

The runner of a job is an ``async`` callable ``run(handle) -> BaseModel``; it reports progress with
``handle.progress(done)`` and returns its typed result (:class:`BatchJobResult`, or the metrics layer's score
summary): a ``batch_id`` field goes to the record's ``batch_id``, the other fields to its ``result``. An exception
fails the job with its message; the runner is responsible for aborting its store writer.

Finished records older than ``retention_hours`` are pruned (at start and then at most once a minute).
A record that cannot be written (a full or read-only jobs folder) refuses new jobs with 503 and fails
a running job with that reason instead of leaving it "running".
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import time
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from pydantic import BaseModel, Field

from services.common.config import JobSettings
from services.common.logging import get_logger
from services.common.provenance import utc_now

from .errors import BadId, NotFound, TooManyJobs, Unavailable
from .job_store import JobStore

log = get_logger(__name__)

_JOB_ID_RE = re.compile(r"^job-[0-9a-f]{16}$")


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


class JobRecord(BaseModel):
    job_id: str
    kind: str  # "batch" | "score"
    state: JobState = JobState.QUEUED
    done: int = 0
    total: int = 0
    batch_id: str | None = None
    error: str | None = None
    created: str = Field(default_factory=utc_now)
    updated: str = Field(default_factory=utc_now)
    started: str | None = None
    finished: str | None = None
    request: dict = Field(default_factory=dict)
    result: dict | None = None
    #: the gateway process running the job ("host:pid")
    owner: str = ""
    #: id of the API key that submitted the job (None when authentication is off); never the key
    key_id: str | None = None
    #: 1 for the first run, +1 each time a gateway resumes the job after its runner died (0: submitted, not yet
    #: taken by an executor)
    attempt: int = 1
    #: the batch being written (batch jobs; set before the first image, so a resumed job finds it)
    staging_batch_id: str | None = None
    #: chunks retried after a generator replica died or was unavailable
    retries: int = 0
    #: generator replicas that made this run's chunks (a large batch job fans out over all of them)
    replicas: int = 0

    @property
    def progress(self) -> float:
        return float(self.done) / self.total if self.total else (1.0 if self.state == JobState.SUCCEEDED else 0.0)


class BatchJobResult(BaseModel):
    """What a batch job produced: the stored batch."""

    batch_id: str


class LostLease(Exception):
    """Another gateway took this job over (this one stalled past the lease): stop without writing anything."""


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
        raise BadId(f"invalid job id {job_id!r}: ids look like job-0123456789abcdef (issued by the gateway)")
    return job_id


class JobHandle:
    """What a running job sees: report progress (persisted, rate-limited) and its own record."""

    def __init__(self, manager: "JobManager", record: JobRecord):
        self._m, self.record = manager, record

    def progress(self, done: int, total: int | None = None) -> None:
        self.record.done = int(done)
        if total is not None:
            self.record.total = int(total)
        self._m._touch(self.record, force=False)

    def save(self) -> None:
        """Persist the record now (e.g. after setting ``staging_batch_id``); raises if it cannot be written."""
        self.check_lease()
        self._m._touch(self.record, force=True, strict=True)

    def check_lease(self) -> None:
        """Raise :class:`LostLease` when the stored record names another owner or attempt (call before
        writing results: two gateways never write the same batch)."""
        self._m._check_lease(self.record)


Runner = Callable[[JobHandle], Awaitable[BaseModel]]
#: builds the runner that continues an orphaned job from its record
Resumer = Callable[[JobRecord], Runner]


def _parse_time(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return 0.0


class JobManager:
    """Keeps job records in a :class:`JobStore`; with ``execute`` it also runs jobs as asyncio tasks in the
    current event loop (its own submissions, and unowned or orphaned jobs it claims)."""

    PRUNE_EVERY_S = 60.0

    def __init__(self, jobs_dir: str | Path | JobStore | None, max_concurrent: int = 8,
                 on_change: Callable[[JobRecord], None] | None = None, persist_every_s: float = 0.5,
                 settings: JobSettings | None = None, resumers: dict[str, Resumer] | None = None,
                 execute: bool = True, on_submit: Callable[[JobRecord], None] | None = None,
                 on_finishing: Callable[[JobRecord], Awaitable[None]] | None = None):
        if isinstance(jobs_dir, JobStore) or jobs_dir is None:
            self.dir = jobs_dir
        else:
            self.dir = JobStore(jobs_dir)
        if not execute and self.dir is None:
            raise ValueError("a manager that does not execute jobs needs a job store the executors share")
        self.execute = execute
        self.on_submit = on_submit
        self.on_finishing = on_finishing  # awaited before a finished job's record is written (telemetry first)
        self._settled: dict[str, JobRecord] = {}  # finished records read from the store (they no longer change)
        self.max_concurrent = max_concurrent
        self.on_change = on_change
        self.persist_every_s = persist_every_s
        self.settings = settings or JobSettings()
        self.resumers = dict(resumers or {})
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        #: what this manager writes into its claim markers (the owner + a nonce: two managers of one process,
        #: as in the tests, are two claimants; reading back its own marker after a retried PUT is a win)
        self._claim_token = f"{self.owner} {secrets.token_hex(6)}"
        self._jobs: dict[str, JobRecord] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._last_persist: dict[str, float] = {}
        self._pending: list[JobRecord] = []  # orphans claimed before an event loop was running
        self._last_prune = 0.0
        self._heartbeat: asyncio.Task | None = None
        self._persist_warned = False
        self._lost: set[str] = set()  # jobs another gateway took over: never written by this one again
        self._closing = False  # shutting down: take no job
        if self.dir is not None and execute:
            self._recover()
            self.prune()

    # ---- persistence --------------------------------------------------------------------------
    def _persist(self, rec: JobRecord) -> None:
        if self.dir is None:
            return
        self.dir.put(validate_job_id(rec.job_id), rec.model_dump_json().encode())

    def _read(self, job_id: str) -> JobRecord | None:
        if job_id in self._settled:
            return self._settled[job_id]
        data = self.dir.get(job_id)  # type: ignore[union-attr]  (OSError: the store is unreachable — raised)
        try:
            rec = JobRecord.model_validate_json(data) if data is not None else None
        except ValueError:  # a torn or foreign file: ignore it
            return None
        if rec is not None and rec.state.finished:
            self._settled[job_id] = rec
        return rec

    def _stored(self) -> list[JobRecord]:
        """Every record in the store (the gateway's view of the jobs: it runs none)."""
        if self.dir is None:
            return []
        ids = self.dir.ids()
        for gone in set(self._settled) - set(ids):  # pruned by an executor
            self._settled.pop(gone, None)
        return [r for r in (self._read(i) for i in ids) if r is not None]

    def _orphaned(self, rec: JobRecord) -> bool:
        """Unfinished and not ours, and either never taken (submitted by a gateway that runs no jobs) or its
        runner gone: a dead pid on this host, or no heartbeat for ``lease_s`` (another host, a stalled
        process, a pid reused after a container restart)."""
        if rec.state.finished:
            return False
        if not rec.owner:
            return True
        host, _, pid = rec.owner.rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            return True
        return time.time() - _parse_time(rec.updated) > self.settings.lease_s

    def _check_lease(self, rec: JobRecord) -> None:
        if self.dir is None or rec.job_id in self._lost:
            if rec.job_id in self._lost:
                raise LostLease(rec.job_id)
            return
        try:
            disk = self._read(rec.job_id)
        except OSError as e:  # the store did not answer: checked again before the next write
            log.warning("could not check a job's lease", extra={"job_id": rec.job_id, "error": e.strerror})
            return
        if disk is not None and (disk.owner != rec.owner or disk.attempt != rec.attempt):
            self._lost.add(rec.job_id)
            log.warning("job taken over by another gateway; stopping here",
                        extra={"job_id": rec.job_id, "owner": disk.owner, "attempt": disk.attempt})
            raise LostLease(rec.job_id)

    def _claim(self, rec: JobRecord) -> bool:
        """Take an unowned or orphaned job for this process; False when another process claimed it first.

        A marker older than ``lease_s`` whose attempt the record never reached was abandoned (its claimant died
        between the claim and the record, or could not write it): the next attempt is claimed instead, so a job is
        never stuck behind a dead claim. (A live claimant writes the record right after its claim.)"""
        attempt = rec.attempt + 1
        try:
            for _ in range(32):
                if self.dir.claim(rec.job_id, attempt, self._claim_token):  # type: ignore[union-attr]
                    rec.attempt = attempt - 1  # _adopt moves it to the claimed attempt
                    return True
                age = self.dir.claim_age(rec.job_id, attempt)  # type: ignore[union-attr]
                if age is None or age < self.settings.lease_s:
                    return False
                attempt += 1
        except OSError as e:
            log.warning("could not claim a job", extra={"job_id": rec.job_id, "error": e.strerror})
        return False

    def _recover(self) -> None:
        """Load earlier jobs; orphans are resumed (or failed as interrupted when their kind can't resume)."""
        self.sweep()
        if _loop_running():  # else pending orphans start with resume_pending() / the first submit
            self._ensure_beat()

    def _adopt(self, rec: JobRecord) -> JobRecord:
        fresh = rec.attempt == 0
        self._lost.discard(rec.job_id)  # claimed again by this process (after another one had it)
        rec.attempt += 1
        rec.owner = self.owner
        rec.updated = utc_now()
        if rec.kind in self.resumers:
            rec.state = JobState.QUEUED
            if fresh:
                log.info("starting submitted job", extra={"job_id": rec.job_id, "kind": rec.kind})
            else:
                log.warning("resuming interrupted job", extra={"job_id": rec.job_id, "kind": rec.kind,
                                                               "attempt": rec.attempt, "done": rec.done})
            self._pending.append(rec)
        else:
            rec.state = JobState.FAILED
            rec.error = "interrupted: the gateway that ran this job stopped before it finished; nothing was stored"
            rec.finished = rec.updated
        try:
            self._persist(rec)
        except OSError as e:
            log.error("could not record a recovered job", extra={"job_id": rec.job_id, "error": e.strerror})
        return rec

    def _start_pending(self) -> None:
        pending, self._pending = self._pending, []
        for rec in pending:
            self._events[rec.job_id] = asyncio.Event()
            try:
                run = self.resumers[rec.kind](rec)
            except Exception as e:  # noqa: BLE001 - e.g. its dataset is no longer configured: fail this one job
                from .errors import api_error

                rec.state, rec.error, rec.finished = JobState.FAILED, api_error(e).summary, utc_now()
                log.warning("job cannot be resumed", extra={"job_id": rec.job_id, "error": rec.error})
                self._finish(rec)
                continue
            self._start(rec, run)

    async def resume_pending(self) -> int:
        """Start the orphans claimed while no event loop was running (and the heartbeat); returns how many."""
        if not self.execute:
            return 0
        n = len(self._pending)
        self._start_pending()
        self._ensure_beat()
        return n

    def _touch(self, rec: JobRecord, force: bool = True, strict: bool = False) -> None:
        if rec.job_id in self._lost:
            return
        rec.updated = utc_now()
        now = time.monotonic()
        if force or now - self._last_persist.get(rec.job_id, 0.0) >= self.persist_every_s:
            try:
                self._persist(rec)
            except OSError as e:
                if strict:
                    raise
                if not self._persist_warned:  # keep going in memory; the final write decides
                    self._persist_warned = True
                    log.error("job record not writable", extra={"job_id": rec.job_id, "error": e.strerror})
            else:
                self._last_persist[rec.job_id] = now
        ev = self._events.get(rec.job_id)
        if ev is not None:
            ev.set()
        if self.on_change is not None:
            try:
                self.on_change(rec)
            except Exception:  # metrics must never break a job
                pass

    # ---- retention ----------------------------------------------------------------------------
    def prune(self, now: float | None = None) -> int:
        """Delete finished records older than ``retention_hours``; returns how many were removed."""
        now = time.time() if now is None else now
        self._last_prune = time.monotonic()
        horizon = now - self.settings.retention_hours * 3600.0
        old = [job_id for job_id, rec in self._jobs.items()
               if rec.state.finished and _parse_time(rec.finished or rec.updated) < horizon]
        for job_id in old:
            self._jobs.pop(job_id, None)
            self._events.pop(job_id, None)
            self._last_persist.pop(job_id, None)
        if self.dir is not None:
            self.dir.delete(*old)
        return len(old)

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune >= self.PRUNE_EVERY_S:
            try:
                self.prune()
            except OSError:
                pass

    # ---- queries ------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        validate_job_id(job_id)
        rec = self._jobs.get(job_id)
        if rec is None and self.dir is not None:  # written by another replica sharing the store
            rec = self._read(job_id)
        if rec is None:
            raise NotFound(f"job {job_id} not found")
        return rec

    def _known(self) -> list[JobRecord]:
        if self.execute:
            return list(self._jobs.values())
        return self._stored()

    def list(self, kind: str | None = None) -> list[JobRecord]:
        jobs = [j for j in self._known() if kind is None or j.kind == kind]
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    def active(self) -> int:
        return sum(1 for j in self._known() if not j.state.finished)

    def counts(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for j in self._known():
            out[(j.kind, j.state.value)] = out.get((j.kind, j.state.value), 0) + 1
        return out

    # ---- running ------------------------------------------------------------------------------
    def submit(self, kind: str, request: dict, total: int, run: Runner | None, key_id: str | None = None) -> JobRecord:
        """Record a new job and start ``run`` here (an executor), or leave it queued and unowned for the
        executors (``execute=False``: ``run`` is not used; they rebuild it from the record with the resumer
        of its kind)."""
        if self.execute:
            self._maybe_prune()
            if self._pending:
                self._start_pending()
            self._ensure_beat()
        try:
            active = self.active()
        except OSError as e:
            raise Unavailable(f"cannot read the job store ({e.strerror or 'I/O error'}); retry in a moment") from None
        if active >= self.max_concurrent:
            raise TooManyJobs(
                f"{active} jobs are already queued or running (limit {self.max_concurrent}); "
                "wait for one to finish or raise SYNTHRAD_LIMITS__MAX_CONCURRENT_JOBS"
            )
        rec = JobRecord(job_id=f"job-{secrets.token_hex(8)}", kind=kind, total=int(total), request=request,
                        owner=self.owner if self.execute else "", attempt=1 if self.execute else 0, key_id=key_id)
        try:
            self._persist(rec)
        except OSError as e:
            raise Unavailable(f"cannot record the job: the job store is not writable ({e.strerror or 'I/O error'}); "
                              "free space or fix its permissions, then retry") from None
        if not self.execute:
            if self.on_submit is not None:
                try:
                    self.on_submit(rec)
                except Exception as e:  # noqa: BLE001 - the executors' heartbeat sweep finds it anyway
                    log.warning("could not notify the jobs deployment", extra={"job_id": rec.job_id,
                                                                             "error": type(e).__name__})
            if self.on_change is not None:
                self.on_change(rec)
            return rec
        self._jobs[rec.job_id] = rec
        self._events[rec.job_id] = asyncio.Event()
        self._touch(rec)
        self._start(rec, run)
        return rec

    def _start(self, rec: JobRecord, run: Runner) -> None:
        self._tasks[rec.job_id] = asyncio.get_running_loop().create_task(self._run(rec, run))
        self._ensure_beat()

    async def take_submitted(self) -> int:
        """Claim and start the jobs waiting in the store now (the jobs deployment does this when a gateway has
        stored one, besides every ``heartbeat_s``); returns how many were taken."""
        n = self.sweep()
        self._ensure_beat()
        return n

    def ensure_running(self) -> None:
        """Keep the heartbeat (refresh + sweep) going: restarted if it ever ended (the jobs deployment's health
        check calls this; it does no I/O)."""
        if self._heartbeat is not None and self._heartbeat.done() and not self._heartbeat.cancelled():
            exc = self._heartbeat.exception()
            if exc is not None:
                log.error("job heartbeat stopped; restarting it", extra={"error": type(exc).__name__})
        self._ensure_beat()

    def _ensure_beat(self) -> None:
        if not self.execute or self._closing:
            return
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        """Every ``heartbeat_s``: refresh the records of this process's running jobs (so others can tell they
        are alive) and take over jobs whose gateway died meanwhile (another replica, or a process of an
        earlier serve that outlived its start-up here)."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            for job_id, task in list(self._tasks.items()):
                rec = self._jobs.get(job_id)
                if rec is None or rec.state.finished:
                    continue
                try:
                    self._check_lease(rec)
                except LostLease:
                    task.cancel()
                    continue
                self._touch(rec, force=True)
            try:
                self.sweep()
            except Exception as e:  # noqa: BLE001 - the beat must go on (the store may be back next time)
                log.warning("could not scan job records", extra={"error": getattr(e, "strerror", None) or
                                                                          type(e).__name__})

    def sweep(self) -> int:
        """Claim and start (or fail) orphaned jobs found in the jobs folder; returns how many were taken."""
        if self.dir is None or not self.execute or self._closing:
            return 0
        taken = 0
        pending = {p.job_id for p in self._pending}
        for job_id in self.dir.ids():
            known = self._jobs.get(job_id)
            if job_id in self._tasks or job_id in pending or (known is not None and known.state.finished):
                continue  # ours, or settled: the in-memory record is the one that counts
            rec = self._read(job_id)
            if rec is None:
                continue
            if self._orphaned(rec) and self._claim(rec):
                rec = self._adopt(rec)
                taken += 1
            self._jobs[rec.job_id] = rec
        if self._pending and _loop_running():
            self._start_pending()
        return taken

    async def _run(self, rec: JobRecord, run: Runner) -> None:
        try:
            rec.state, rec.started = JobState.RUNNING, rec.started or utc_now()
            self._touch(rec)
            result = await run(JobHandle(self, rec))
        except LostLease:
            return  # the new owner runs and records it
        except asyncio.CancelledError:
            if rec.job_id in self._lost:
                return
            if rec.kind in self.resumers:  # handed back: the next executor to sweep resumes it at once
                rec.state, rec.owner = JobState.QUEUED, ""
            else:
                rec.state, rec.error = JobState.FAILED, "cancelled (gateway shutting down); nothing was stored"
                rec.finished = utc_now()
            self._finish(rec)
            raise
        except BaseException as e:  # noqa: BLE001 - every failure is reported on the job
            from .errors import api_error

            rec.state = JobState.FAILED
            rec.error = api_error(e).summary
            rec.finished = utc_now()
            log.warning("job failed", extra={"job_id": rec.job_id, "kind": rec.kind, "error": rec.error})
            await self._finish_settled(rec)
        else:
            fields = result.model_dump(mode="json") if result is not None else {}
            if fields.get("batch_id"):
                rec.batch_id = fields.pop("batch_id")
            fields.pop("batch_id", None)
            rec.result = fields or rec.result
            rec.state, rec.finished = JobState.SUCCEEDED, utc_now()
            if rec.total:
                rec.done = rec.total
            await self._finish_settled(rec)
        finally:
            self._tasks.pop(rec.job_id, None)

    FINISHING_TIMEOUT_S = 5.0

    async def _finish_settled(self, rec: JobRecord) -> None:
        """Run the finish hook (telemetry first, at most ``FINISHING_TIMEOUT_S``), then ALWAYS write the final
        record — even when this task is cancelled meanwhile (then re-raised): a finished job is never left
        "running" for another executor to run again."""
        cancelled = False
        if self.on_finishing is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.on_finishing(rec)), self.FINISHING_TIMEOUT_S)
            except asyncio.CancelledError:
                cancelled = True
            except Exception as e:  # noqa: BLE001 - telemetry never holds a job back
                log.warning("job finish hook failed", extra={"job_id": rec.job_id, "error": type(e).__name__})
        self._finish(rec)
        if cancelled:
            raise asyncio.CancelledError

    def _finish(self, rec: JobRecord) -> None:
        try:
            self._touch(rec, force=True, strict=True)
        except OSError as e:  # the state is right in memory; other replicas will see the job as orphaned
            log.error("final job record not writable", extra={"job_id": rec.job_id, "error": e.strerror})
            self._touch(rec, force=False)

    async def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        task = self._tasks.get(validate_job_id(job_id))
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        return self.get(job_id)

    async def watch(self, job_id: str, poll_s: float = 1.0) -> AsyncIterator[JobRecord]:
        """Yield the record now and on every change until the job finishes (a manager that runs no jobs reads
        the store in a worker thread: it may be an object store)."""
        async def current() -> JobRecord:
            return self.get(job_id) if self.execute else await asyncio.to_thread(self.get, job_id)

        rec = await current()
        last = None
        while True:
            copy = rec.model_copy()  # judged and yielded as one snapshot: the live record may change meanwhile
            snap = (copy.state, copy.done, copy.total)
            if snap != last:
                yield copy
                last = snap
            if copy.state.finished:
                return
            ev = self._events.get(job_id)
            if ev is None:  # another replica's job: poll its file
                await asyncio.sleep(poll_s)
            else:
                ev.clear()
                try:
                    await asyncio.wait_for(ev.wait(), poll_s)
                except asyncio.TimeoutError:
                    pass
            rec = await current()

    async def shutdown(self) -> None:
        self._closing = True  # no sweep takes back a job handed back below
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            try:
                await task
            except BaseException:
                pass
        if self._heartbeat is not None:
            self._heartbeat.cancel()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
