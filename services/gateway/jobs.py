"""Jobs: batch generation and scoring, run in the background, stored and pollable with progress.

A job is a :class:`JobRecord` (queued -> running -> succeeded | failed) persisted as JSON under
``<home>/jobs/<job_id>.json`` (atomic write: temp file + rename), so polling works from any gateway replica
sharing that folder and a restarted gateway still answers for old jobs. Jobs that were queued or running
when their process died are marked failed on the next start ("interrupted"); their batch was never
committed, so nothing half-made is visible (the batch store publishes a batch only on commit).

The runner of a job is an ``async`` callable ``run(handle) -> dict``; it reports progress with
``handle.progress(done)`` and returns the job's result fields (e.g. ``{"batch_id": ...}``). An exception
fails the job with its message; the runner is responsible for aborting its store writer (the batch runner
uses the ``BatchWriter`` context manager, which aborts on exceptions).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import time
from enum import Enum
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

from pydantic import BaseModel, Field

from services.common.logging import get_logger
from services.common.provenance import utc_now

from .errors import BadId, NotFound, TooManyJobs

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
    owner: str = ""

    @property
    def progress(self) -> float:
        return float(self.done) / self.total if self.total else (1.0 if self.state == JobState.SUCCEEDED else 0.0)


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
        raise BadId(f"invalid job id {job_id!r}: ids look like job-0123456789abcdef (issued by the gateway)")
    return job_id


class JobHandle:
    """What a running job sees: report progress; the manager persists it (rate-limited)."""

    def __init__(self, manager: "JobManager", record: JobRecord):
        self._m, self.record = manager, record

    def progress(self, done: int, total: int | None = None) -> None:
        self.record.done = int(done)
        if total is not None:
            self.record.total = int(total)
        self._m._touch(self.record, force=False)


Runner = Callable[[JobHandle], Awaitable[dict]]


class JobManager:
    """Starts jobs as asyncio tasks in the current event loop and keeps their records."""

    def __init__(self, jobs_dir: str | Path | None, max_concurrent: int = 8,
                 on_change: Callable[[JobRecord], None] | None = None, persist_every_s: float = 0.5):
        self.dir = Path(jobs_dir) if jobs_dir else None
        self.max_concurrent = max_concurrent
        self.on_change = on_change
        self.persist_every_s = persist_every_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._jobs: dict[str, JobRecord] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._last_persist: dict[str, float] = {}
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._recover()

    # ---- persistence --------------------------------------------------------------------------
    def _path(self, job_id: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{validate_job_id(job_id)}.json"

    def _persist(self, rec: JobRecord) -> None:
        if self.dir is None:
            return
        path = self._path(rec.job_id)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_text(rec.model_dump_json())
        os.replace(tmp, path)

    def _recover(self) -> None:
        """Load earlier jobs; ones left queued/running by a dead process become failed (interrupted)."""
        for f in sorted(self.dir.glob("job-*.json")):
            try:
                rec = JobRecord.model_validate_json(f.read_text())
            except Exception:  # a torn or foreign file: ignore it
                continue
            if not rec.state.finished and not _owner_alive(rec.owner):
                rec.state = JobState.FAILED
                rec.error = "interrupted: the gateway that ran this job stopped before it finished; nothing was stored"
                rec.updated = rec.finished = utc_now()
                self._persist(rec)
            self._jobs[rec.job_id] = rec

    def _touch(self, rec: JobRecord, force: bool = True) -> None:
        rec.updated = utc_now()
        now = time.monotonic()
        if force or now - self._last_persist.get(rec.job_id, 0.0) >= self.persist_every_s:
            self._persist(rec)
            self._last_persist[rec.job_id] = now
        ev = self._events.get(rec.job_id)
        if ev is not None:
            ev.set()
        if self.on_change is not None:
            try:
                self.on_change(rec)
            except Exception:  # metrics must never break a job
                pass

    # ---- queries ------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        validate_job_id(job_id)
        rec = self._jobs.get(job_id)
        if rec is None and self.dir is not None:  # written by another gateway replica sharing the folder
            path = self._path(job_id)
            if path.exists():
                try:
                    return JobRecord.model_validate_json(path.read_text())
                except Exception:
                    pass
        if rec is None:
            raise NotFound(f"job {job_id} not found")
        return rec

    def list(self, kind: str | None = None) -> list[JobRecord]:
        jobs = [j for j in self._jobs.values() if kind is None or j.kind == kind]
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    def active(self) -> int:
        return sum(1 for j in self._jobs.values() if not j.state.finished)

    def counts(self) -> dict[tuple[str, str], int]:
        out: dict[tuple[str, str], int] = {}
        for j in self._jobs.values():
            out[(j.kind, j.state.value)] = out.get((j.kind, j.state.value), 0) + 1
        return out

    # ---- running ------------------------------------------------------------------------------
    def submit(self, kind: str, request: dict, total: int, run: Runner) -> JobRecord:
        if self.active() >= self.max_concurrent:
            raise TooManyJobs(
                f"{self.active()} jobs are already queued or running (limit {self.max_concurrent}); "
                "wait for one to finish or raise SYNTHRAD_LIMITS__MAX_CONCURRENT_JOBS"
            )
        rec = JobRecord(job_id=f"job-{secrets.token_hex(8)}", kind=kind, total=int(total), request=request,
                        owner=self.owner)
        self._jobs[rec.job_id] = rec
        self._events[rec.job_id] = asyncio.Event()
        self._touch(rec)
        self._tasks[rec.job_id] = asyncio.get_running_loop().create_task(self._run(rec, run))
        return rec

    async def _run(self, rec: JobRecord, run: Runner) -> None:
        rec.state, rec.started = JobState.RUNNING, utc_now()
        self._touch(rec)
        try:
            result = await run(JobHandle(self, rec))
        except asyncio.CancelledError:
            rec.state, rec.error = JobState.FAILED, "cancelled (gateway shutting down); nothing was stored"
            rec.finished = utc_now()
            self._touch(rec)
            raise
        except BaseException as e:  # noqa: BLE001 - every failure is reported on the job
            from .errors import api_error

            rec.state = JobState.FAILED
            rec.error = api_error(e).message
            rec.finished = utc_now()
            log.warning("job failed", extra={"job_id": rec.job_id, "kind": rec.kind, "error": rec.error})
            self._touch(rec)
        else:
            result = dict(result or {})
            if "batch_id" in result:
                rec.batch_id = result.pop("batch_id")
            rec.result = result or rec.result
            rec.state, rec.finished = JobState.SUCCEEDED, utc_now()
            if rec.total:
                rec.done = rec.total
            self._touch(rec)
        finally:
            self._tasks.pop(rec.job_id, None)

    async def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        task = self._tasks.get(validate_job_id(job_id))
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        return self.get(job_id)

    async def watch(self, job_id: str, poll_s: float = 1.0) -> AsyncIterator[JobRecord]:
        """Yield the record now and on every change until the job finishes."""
        rec = self.get(job_id)
        last = None
        while True:
            snap = (rec.state, rec.done, rec.total)
            if snap != last:
                yield rec.model_copy()
                last = snap
            if rec.state.finished:
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
            rec = self.get(job_id)

    async def shutdown(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            try:
                await task
            except BaseException:
                pass


def _owner_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # can't tell for another host: leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
