"""Jobs that survive faults (in process, no Ray): chunk retries after a lost replica, resume after the gateway
died (same seeds, same pixels, one batch), retention pruning, a jobs folder that cannot be written."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time

import numpy as np
import pytest

from generator_faults import FlakyGenerators
from serving_fakes import TinyGenerator, make_platform
from services.common.config import JobSettings
from services.gateway.clients import is_transient_ray_error
from services.gateway.errors import Unavailable
from services.gateway.jobs import JobManager, JobRecord, JobState
from services.common.provenance import utc_now

DEAD_OWNER = f"{socket.gethostname()}:999999999"  # this host, a pid that does not exist


async def _wait(platform, job_id, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rec = platform.jobs.get(job_id)
        if rec.state.finished:
            return rec
        await asyncio.sleep(0.02)
    raise AssertionError(platform.jobs.get(job_id))


def _pixels(store, batch_id):
    return np.stack([img for _, img in store.iter_images(batch_id)])


def test_chunks_lost_with_their_replica_are_retried_with_the_same_seeds(tmp_path):
    async def go():
        platform, store, gen = make_platform(tmp_path, jobs={"retry_backoff_s": 0.0})
        platform.generators = FlakyGenerators(platform.generators.replicas, failures=3)
        plan = await platform.plan(None, None, None, 40, 5, None, 100, "test")
        rec = await _wait(platform, (await platform.create_batch_job(plan, "png")).job_id)
        assert rec.state == JobState.SUCCEEDED and rec.retries == 3
        ref, _, _ = make_platform(tmp_path / "ref")
        rec2 = await _wait(ref, (await ref.create_batch_job(await ref.plan(None, None, None, 40, 5, None, 100, "t"), "png")).job_id)
        np.testing.assert_array_equal(_pixels(store, rec.batch_id), _pixels(ref.store, rec2.batch_id))
        store.verify(rec.batch_id)

    asyncio.run(go())


def test_a_replica_that_stays_down_fails_the_job_after_the_retries(tmp_path):
    async def go():
        platform, store, _ = make_platform(tmp_path, jobs={"retry_backoff_s": 0.0, "chunk_retries": 2})
        platform.generators = FlakyGenerators(platform.generators.replicas, failures=1000)
        plan = await platform.plan(None, None, None, 20, 0, None, 100, "test")
        rec = await _wait(platform, (await platform.create_batch_job(plan, "png")).job_id)
        assert rec.state == JobState.FAILED and rec.batch_id is None and store.list() == []

    asyncio.run(go())


def test_ray_errors_are_classified():
    import ray.exceptions as rex
    from ray.serve.exceptions import BackPressureError

    assert is_transient_ray_error(rex.ActorDiedError())
    assert is_transient_ray_error(rex.ActorUnavailableError("restarting", b"\0" * 16))
    assert is_transient_ray_error(BackPressureError(num_queued_requests=1, max_queued_requests=1))
    assert not is_transient_ray_error(ValueError("bad seed"))
    assert not is_transient_ray_error(rex.RayTaskError("generate", "tb", RuntimeError("model failed")))


@pytest.mark.parametrize("fmt", ["png", "webdataset"])
def test_a_gateway_that_died_mid_job_is_resumed_from_the_stored_images(tmp_path, fmt, monkeypatch):
    """The batch written by a dead gateway's job is continued by the next gateway: the images already stored
    are kept (not regenerated), the rest are made with the same seeds, and one batch is published."""
    import services.common.store as store_mod

    monkeypatch.setattr(store_mod, "SHARD_SIZE", 8)  # webdataset: resume at a shard boundary

    async def go():
        # gateway 1 writes 20 of 37 images, then its process "dies" (the record keeps a dead owner)
        p1, store, gen1 = make_platform(tmp_path)
        plan = await p1.plan(None, None, None, 37, 100, None, 100, "one batch")
        writer = store.create(plan.model_id, plan.model.model_hash, plan.model.backend, fmt, plan.resolved_params)
        imgs = gen1.generate(plan.conditions[:20], plan.seeds[:20])
        for i in range(20):
            writer.add(imgs[i], plan.seeds[i], plan.conditions[i])
        writer.sync()
        writer._shard_fh and writer._shard_fh.close()  # noqa: SLF001 - a hard kill leaves the shard open
        rec = JobRecord(job_id="job-00000000000000aa", kind="batch", state=JobState.RUNNING, done=20, total=37,
                        request={**plan.record(), "format": fmt}, owner=DEAD_OWNER,
                        staging_batch_id=writer.batch_id)
        (tmp_path / "home" / "jobs" / f"{rec.job_id}.json").write_text(rec.model_dump_json())

        # gateway 2 starts on the same home: it claims and resumes the job
        gen2 = TinyGenerator("tiny")
        p2, store2, _ = make_platform(tmp_path, gen=gen2)
        done = await _wait(p2, rec.job_id)
        assert done.state == JobState.SUCCEEDED and done.attempt == 2 and done.batch_id == writer.batch_id
        kept = 16 if fmt == "webdataset" else 20  # webdataset keeps the closed shards only
        assert sum(gen2.calls) == 37 - kept
        man = store2.verify(done.batch_id)  # every sha256 matches
        assert man.count == 37 and [r.seed for r in man.images] == list(range(100, 137))
        assert store2.list()[0].batch_id == done.batch_id and len(store2.list()) == 1
        ref, _, _ = make_platform(tmp_path / "ref")
        whole = await _wait(ref, (await ref.create_batch_job(
            await ref.plan(None, None, None, 37, 100, None, 100, "t"), fmt)).job_id)
        np.testing.assert_array_equal(_pixels(store2, done.batch_id), _pixels(ref.store, whole.batch_id))
        # a third gateway does not take the finished job again
        p3, _, gen3 = make_platform(tmp_path, gen=TinyGenerator("tiny"))
        await asyncio.sleep(0.1)
        assert p3.jobs.get(rec.job_id).state == JobState.SUCCEEDED and gen3.calls == []

    asyncio.run(go())


def test_a_job_is_claimed_by_one_gateway_only(tmp_path):
    rec = JobRecord(job_id="job-00000000000000cc", kind="score", state=JobState.RUNNING, total=1,
                    request={"batch_id": "x"}, owner=DEAD_OWNER)
    (tmp_path / f"{rec.job_id}.json").write_text(rec.model_dump_json())
    first = JobManager(tmp_path, resumers={"score": lambda r: None})
    second = JobManager(tmp_path, resumers={"score": lambda r: None})
    assert [r.job_id for r in first._pending] == [rec.job_id] and second._pending == []


def test_stale_records_of_another_host_are_taken_over_after_the_lease(tmp_path):
    old = JobRecord(job_id="job-00000000000000dd", kind="batch", state=JobState.RUNNING, total=1,
                    owner="another-host:1", updated="2020-01-01T00:00:00.000000Z")
    fresh = old.model_copy(update={"job_id": "job-00000000000000ee", "updated": utc_now()})
    for r in (old, fresh):
        (tmp_path / f"{r.job_id}.json").write_text(r.model_dump_json())
    m = JobManager(tmp_path)  # no resumer: orphans are failed as interrupted
    assert m.get(old.job_id).state == JobState.FAILED and "interrupted" in m.get(old.job_id).error
    assert m.get(fresh.job_id).state == JobState.RUNNING  # its gateway may well be alive


def test_a_stale_record_on_this_host_is_taken_over_even_if_its_pid_is_alive(tmp_path):
    """A container restart reuses hostnames and pids: without a heartbeat for the lease, the job is orphaned."""
    import os

    stale = JobRecord(job_id="job-00000000000000f1", kind="batch", state=JobState.RUNNING, total=1,
                      owner=f"{socket.gethostname()}:{os.getpid()}", updated="2020-01-01T00:00:00.000000Z")
    (tmp_path / f"{stale.job_id}.json").write_text(stale.model_dump_json())
    m = JobManager(tmp_path)
    assert m.get(stale.job_id).state == JobState.FAILED and m.get(stale.job_id).attempt == 2


def test_a_gateway_that_lost_its_job_stops_writing(tmp_path):
    """A stalled gateway whose job was taken over (its record names another owner) stops at the next chunk,
    aborts nothing of the new owner's batch and never writes the record again."""

    async def go():
        platform, store, _ = make_platform(tmp_path)
        gate = asyncio.Event()
        real = platform.generators.generate

        async def slow(model_id, chunk):
            await gate.wait()
            return await real(model_id, chunk)

        platform.generators.generate = slow
        plan = await platform.plan(None, None, None, 64, 0, None, 100, "t")
        rec = await platform.create_batch_job(plan, "png")
        for _ in range(100):
            if platform.jobs.get(rec.job_id).staging_batch_id:
                break
            await asyncio.sleep(0.01)
        path = tmp_path / "home" / "jobs" / f"{rec.job_id}.json"
        taken = JobRecord.model_validate_json(path.read_text()).model_copy(
            update={"owner": "another-host:7", "attempt": 2})
        path.write_text(taken.model_dump_json())
        gate.set()
        task = platform.jobs._tasks.get(rec.job_id)  # noqa: SLF001
        if task is not None:
            await asyncio.wait_for(task, 10)
        assert JobRecord.model_validate_json(path.read_text()) == taken  # the new owner's record, untouched
        staging = platform.jobs.get(rec.job_id).staging_batch_id
        assert list((tmp_path / "home" / "batches").glob(f".tmp-{staging}-*"))  # not aborted: the new owner's
        assert store.list() == []  # this gateway published nothing

    asyncio.run(go())


def test_finished_records_are_pruned_after_the_retention(tmp_path):
    old = JobRecord(job_id="job-0000000000000001", kind="batch", state=JobState.SUCCEEDED,
                    finished="2020-01-01T00:00:00.000000Z", updated="2020-01-01T00:00:00.000000Z")
    new = old.model_copy(update={"job_id": "job-0000000000000002", "finished": utc_now()})
    running = old.model_copy(update={"job_id": "job-0000000000000003", "state": JobState.RUNNING,
                                     "owner": f"{socket.gethostname()}:1", "finished": None})
    for r in (old, new, running):
        (tmp_path / f"{r.job_id}.json").write_text(r.model_dump_json())
    m = JobManager(tmp_path, settings=JobSettings(retention_hours=24))
    assert {r.job_id for r in m.list()} == {new.job_id, running.job_id}
    assert not (tmp_path / f"{old.job_id}.json").exists()


def test_a_jobs_folder_that_cannot_be_written_refuses_jobs_and_fails_none_silently(tmp_path):
    async def go():
        platform, store, _ = make_platform(tmp_path)
        jobs_dir = tmp_path / "home" / "jobs"
        plan = await platform.plan(None, None, None, 4, 0, None, 100, "t")
        ok = await _wait(platform, (await platform.create_batch_job(plan, "png")).job_id)
        shutil.rmtree(jobs_dir)
        jobs_dir.write_text("not a folder")  # every write below it now fails with an OS error
        with pytest.raises(Unavailable) as e:
            await platform.create_batch_job(plan, "png")
        assert "not writable" in e.value.message and str(tmp_path) not in e.value.message
        assert platform.jobs.get(ok.job_id).state == JobState.SUCCEEDED  # earlier jobs still answer

    asyncio.run(go())
