"""The shared job store (a folder or an S3 bucket) and jobs run outside the gateway: a gateway that runs no
jobs stores them, executors claim them (exactly one per attempt), any gateway answers, and a job handed back by
a stopping executor is resumed by another one — on a real S3-API server (moto) as on a folder."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from pydantic import BaseModel

from s3_server import s3_bucket
from serving_fakes import FakeScorer, TinyGenerator
from services.common.config import JobSettings, Settings
from services.common.store import BatchStore
from services.gateway.clients import LocalScorer
from services.gateway.core import Platform
from services.gateway.errors import Unavailable
from services.gateway.job_store import JobStore
from services.gateway.jobs import JobRecord, JobState
from services.generator.generation import LocalGenerators
from services.generator.replica import GeneratorReplica


@pytest.fixture(params=["folder", "s3"])
def location(request, tmp_path):
    if request.param == "folder":
        yield str(tmp_path / "jobs")
    else:
        with s3_bucket() as bucket:
            yield f"{bucket}/prefix/_jobs"


def test_records_round_trip_and_claims_are_exclusive(location):
    store = JobStore(location)
    assert store.ids() == [] and store.get("job-00000000000000aa") is None
    rec = JobRecord(job_id="job-00000000000000aa", kind="batch", total=3)
    store.put(rec.job_id, rec.model_dump_json().encode())
    store.put("job-00000000000000bb", b"{}")
    assert store.ids() == ["job-00000000000000aa", "job-00000000000000bb"]  # claims/temp files are not records
    assert JobRecord.model_validate_json(store.get(rec.job_id)) == rec

    # eight executors race for attempt 1 of one job: exactly one wins; attempt 2 is a new race
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        if JobStore(location).claim(rec.job_id, 1, f"host:{i}"):
            wins.append(f"host:{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert not store.claim(rec.job_id, 1, "late") and store.claim(rec.job_id, 2, "next")
    assert store.ids() == ["job-00000000000000aa", "job-00000000000000bb"]

    store.delete(rec.job_id)  # with its claims: the id could be claimed from attempt 1 again
    assert store.ids() == ["job-00000000000000bb"] and store.claim(rec.job_id, 1, "again")


def _settings(tmp_path, location: str, store_url: str) -> Settings:
    return Settings(home=tmp_path / "home", store_url=store_url, jobs={"url": location, "heartbeat_s": 0.2})


class _SlowTiny(TinyGenerator):
    """A forward pass takes a moment, so a job is still running when the test stops its executor."""

    def generate(self, conditions, seeds, params=None, prompts=None):
        time.sleep(0.1)
        return super().generate(conditions, seeds, params, prompts)


def _platform(settings: Settings, execute: bool, slow: bool = False, on_submit=None) -> Platform:
    gen = _SlowTiny("tiny") if slow else TinyGenerator("tiny")
    store = BatchStore(settings.resolved_store_url)
    return Platform(LocalGenerators({"tiny": GeneratorReplica("tiny", generator=gen)}), LocalScorer(FakeScorer(store)),
                    store, settings, jobs_dir=settings.resolved_jobs_url, default_model="tiny",
                    execute_jobs=execute, on_submit=on_submit, window=1 if slow else 4)


async def _until(pred, timeout=30.0, every=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = pred()
        if out:
            return out
        await asyncio.sleep(every)
    raise AssertionError("condition not met in time")


def _pixels(store: BatchStore, batch_id: str) -> np.ndarray:
    return np.stack([img for _, img in store.iter_images(batch_id)])


@pytest.fixture(params=["folder", "s3"])
def shared(request, tmp_path):
    """(jobs location, batch store URL) shared by every process of the test."""
    if request.param == "folder":
        yield str(tmp_path / "jobs"), str(tmp_path / "batches")
    else:
        with s3_bucket() as bucket:
            yield f"{bucket}/_jobs", f"{bucket}/batches"


def test_gateways_store_jobs_that_executors_run_and_hand_over(tmp_path, shared):
    location, store_url = shared
    settings = _settings(tmp_path, location, store_url)
    submitted: list[str] = []

    async def go():
        gw_a = _platform(settings, execute=False, on_submit=lambda rec: submitted.append(rec.job_id))
        gw_b = _platform(settings, execute=False)  # a second gateway replica: never saw the submission
        workers = [_platform(settings, execute=True, slow=True) for _ in range(2)]

        plan = await gw_a.plan(None, None, None, 96, 7, None, 100, "test")
        rec = await gw_a.create_batch_job(plan, "png")
        assert submitted == [rec.job_id]
        assert rec.state == JobState.QUEUED and rec.attempt == 0 and rec.owner == ""
        assert (await gw_b.get_job(rec.job_id)).state == JobState.QUEUED  # any gateway answers at once
        assert gw_a.jobs._tasks == {} and gw_a.jobs.active() == 1  # noqa: SLF001 - the gateway runs nothing

        taken = await asyncio.gather(*(w.jobs.take_submitted() for w in workers))
        assert sorted(taken) == [0, 1]  # exactly one executor claimed it
        first = workers[taken.index(1)]
        other = workers[taken.index(0)]
        await _until(lambda: gw_b.jobs.get(rec.job_id).done >= 1)

        # the executor stops (a rolling restart): the job is handed back, queued, and the other one resumes it
        await first.shutdown()
        handed = await gw_a.get_job(rec.job_id)
        assert handed.state == JobState.QUEUED and handed.owner == "" and handed.attempt == 1
        assert await other.jobs.take_submitted() == 1
        done = await _until(lambda: (r := gw_b.jobs.get(rec.job_id)).state.finished and r)
        assert done.state == JobState.SUCCEEDED and done.attempt == 2 and done.batch_id
        assert done.replicas == 1
        assert [j.job_id for j in await gw_a.list_jobs()] == [rec.job_id]

        store = BatchStore(store_url)
        store.verify(done.batch_id)
        man = store.get(done.batch_id)
        assert man.count == 96 and [r.seed for r in man.images] == list(range(7, 103))
        ref = _platform(_settings(tmp_path / "ref", str(tmp_path / "ref-jobs"), str(tmp_path / "ref-batches")),
                        execute=True)
        whole = await ref.jobs.wait((await ref.create_batch_job(
            await ref.plan(None, None, None, 96, 7, None, 100, "t"), "png")).job_id, timeout=60)
        np.testing.assert_array_equal(_pixels(store, done.batch_id), _pixels(ref.store, whole.batch_id))
        for w in workers:
            await w.shutdown()

    asyncio.run(go())


def test_gateway_without_executors_is_refused_a_private_job_store():
    from services.gateway.jobs import JobManager

    with pytest.raises(ValueError, match="job store"):
        JobManager(None, execute=False)


# ---- faults around claims and finishing ------------------------------------------------------------------------------
def _record(store: JobStore, **kw) -> JobRecord:
    rec = JobRecord(job_id=kw.pop("job_id", "job-00000000000000cc"), kind="score", total=1, **kw)
    store.put(rec.job_id, rec.model_dump_json().encode())
    return rec


class _Done(BaseModel):
    value: int = 1


def _resumer(calls: list):
    def resume(rec):
        async def run(handle):
            calls.append(rec.attempt)
            return _Done()
        return run
    return resume


def test_a_claim_abandoned_by_a_dead_claimant_does_not_block_the_job(tmp_path):
    from services.gateway.jobs import JobManager

    store = JobStore(tmp_path / "jobs")
    dead = f"{socket.gethostname()}:999999999"
    rec = _record(store, owner=dead, attempt=1, state=JobState.RUNNING)
    assert store.claim(rec.job_id, 2, "someone else 1")  # claimed, then its claimant died before writing the record

    async def go():
        calls: list[int] = []
        fresh = JobManager(store, resumers={"score": _resumer(calls)})  # the marker is young: not taken
        await fresh.take_submitted()
        assert calls == [] and store.get(rec.job_id) is not None
        old = time.time() - 3600
        os.utime(tmp_path / "jobs" / f".{rec.job_id}.claim-2", (old, old))
        later = JobManager(store, resumers={"score": _resumer(calls)})  # abandoned past the lease: attempt 3
        await later.take_submitted()  # (claimed when it started; started now)
        done = await later.wait(rec.job_id, timeout=10)
        assert done.state == JobState.SUCCEEDED and done.attempt == 3 and calls == [3]
        await fresh.shutdown()
        await later.shutdown()

    asyncio.run(go())


def test_own_marker_read_back_and_other_managers_of_one_process_are_other_claimants(location):
    store = JobStore(location)
    assert store.claim("job-00000000000000dd", 1, "host:1 aaaa")
    again = store.claim("job-00000000000000dd", 1, "host:1 aaaa")  # a retried PUT finding its own marker
    assert again == (store.local is None)  # object stores read the marker back; O_EXCL never retries
    assert not store.claim("job-00000000000000dd", 1, "host:1 bbbb")


def test_a_job_that_cannot_be_resumed_fails_with_the_reason_and_the_beat_goes_on(tmp_path):
    from services.gateway.errors import InvalidArgument
    from services.gateway.jobs import JobManager

    store = JobStore(tmp_path / "jobs")
    calls: list[int] = []

    def resume(rec):
        if rec.job_id == "job-00000000000000e1":
            raise InvalidArgument("unknown dataset 'gone'; configured datasets: (none)")
        return _resumer(calls)(rec)

    async def go():
        m = JobManager(store, resumers={"score": resume}, settings=JobSettings(heartbeat_s=0.05))
        bad = _record(store, job_id="job-00000000000000e1", attempt=0)
        good = _record(store, job_id="job-00000000000000e2", attempt=0)
        assert await m.take_submitted() == 2
        failed = JobRecord.model_validate_json(store.get(bad.job_id))
        assert failed.state == JobState.FAILED and "unknown dataset 'gone'" in failed.error
        assert (await m.wait(good.job_id, timeout=10)).state == JobState.SUCCEEDED
        third = _record(store, job_id="job-00000000000000e3", attempt=0)
        await _until(lambda: JobRecord.model_validate_json(store.get(third.job_id)).state.finished)  # the beat
        await m.shutdown()

    asyncio.run(go())


def test_a_stopping_executor_takes_nothing_and_a_stuck_finish_hook_never_keeps_a_job_running(tmp_path, monkeypatch):
    from services.gateway.jobs import JobManager

    store = JobStore(tmp_path / "jobs")

    async def hang(rec):
        await asyncio.sleep(3600)  # telemetry that never answers

    async def go():
        monkeypatch.setattr(JobManager, "FINISHING_TIMEOUT_S", 0.1)
        m = JobManager(store, resumers={"score": _resumer([])}, on_finishing=hang)
        rec = _record(store, job_id="job-00000000000000f1", attempt=0)
        assert await m.take_submitted() == 1
        done = await m.wait(rec.job_id, timeout=10)
        assert done.state == JobState.SUCCEEDED
        assert JobRecord.model_validate_json(store.get(rec.job_id)).state == JobState.SUCCEEDED  # written
        await m.shutdown()
        _record(store, job_id="job-00000000000000f2", attempt=0)
        assert await m.take_submitted() == 0 and m.sweep() == 0  # closing: nothing is taken any more

    asyncio.run(go())


def test_the_gateway_says_503_when_the_job_store_does_not_answer(tmp_path):
    settings = _settings(tmp_path, str(tmp_path / "jobs"), str(tmp_path / "batches"))

    async def go():
        gw = _platform(settings, execute=False)
        plan = await gw.plan(None, None, None, 4, 0, None, 100, "test")
        rec = await gw.create_batch_job(plan, "png")
        shutil.rmtree(tmp_path / "jobs")
        (tmp_path / "jobs").write_text("not a folder any more")  # every read below it fails with an OS error
        for call in (gw.get_job(rec.job_id), gw.list_jobs(), gw.create_batch_job(plan, "png")):
            with pytest.raises(Unavailable, match="job store"):
                await call

    asyncio.run(go())


def test_storages_without_an_atomic_create_are_refused():
    with pytest.raises(ValueError, match="atomic create"):
        JobStore("http://127.0.0.1:1/jobs")
