"""Job manager: states, progress, persistence across restarts, limits, ids; gRPC loopback guard."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

from services.gateway.errors import BadId, NotFound, TooManyJobs, api_error
from services.gateway.jobs import JobManager, JobRecord, JobState


class _Made(BaseModel):
    """A runner's typed result: ``batch_id`` goes to the record's batch_id, the rest to its result."""

    batch_id: str
    extra: int


def test_job_lifecycle_progress_and_persistence(tmp_path):
    async def go():
        m = JobManager(tmp_path, max_concurrent=2, persist_every_s=0.0)
        gate = asyncio.Event()

        async def run(h):
            for i in range(1, 4):
                h.progress(i)
                await asyncio.sleep(0)
            await gate.wait()
            return _Made(batch_id="20261127t015959-0123456789ab", extra=1)

        rec = m.submit("batch", {"count": 3}, 3, run)
        seen = []

        async def watch():
            async for r in m.watch(rec.job_id, poll_s=0.05):
                seen.append((r.state, r.done))

        w = asyncio.ensure_future(watch())
        await asyncio.sleep(0.05)
        on_disk = JobRecord.model_validate_json((tmp_path / f"{rec.job_id}.json").read_text())
        assert on_disk.state == JobState.RUNNING and on_disk.done == 3
        gate.set()
        final = await m.wait(rec.job_id, timeout=5)
        await asyncio.wait_for(w, 5)
        assert final.state == JobState.SUCCEEDED and final.batch_id.endswith("0123456789ab")
        assert final.result == {"extra": 1} and final.progress == 1.0
        assert seen[-1] == (JobState.SUCCEEDED, 3) and seen[0][0] in (JobState.QUEUED, JobState.RUNNING)
        # a new manager (gateway restart) still answers for the job
        again = JobManager(tmp_path)
        assert again.get(rec.job_id).state == JobState.SUCCEEDED
        assert again.counts() == {("batch", "succeeded"): 1}

    asyncio.run(go())


def test_failed_job_keeps_the_reason(tmp_path):
    async def go():
        m = JobManager(tmp_path)

        async def run(h):
            h.progress(1)
            raise RuntimeError("replica died")

        rec = m.submit("batch", {}, 5, run)
        final = await m.wait(rec.job_id, timeout=5)
        assert final.state == JobState.FAILED and "replica died" in final.error and final.batch_id is None

    asyncio.run(go())


def test_interrupted_jobs_become_failed_on_restart(tmp_path):
    stale = JobRecord(job_id="job-00000000000000aa", kind="batch", state=JobState.RUNNING, done=3, total=10,
                      owner="no-such-host-or-this-one:999999999")
    import socket

    stale.owner = f"{socket.gethostname()}:999999999"  # this host, a pid that does not exist
    (tmp_path / f"{stale.job_id}.json").write_text(stale.model_dump_json())
    remote = stale.model_copy(update={"job_id": "job-00000000000000bb", "owner": "another-host:1"})
    (tmp_path / f"{remote.job_id}.json").write_text(remote.model_dump_json())
    (tmp_path / "job-garbage.json").write_text("{not json")
    m = JobManager(tmp_path)
    rec = m.get("job-00000000000000aa")
    assert rec.state == JobState.FAILED and "interrupted" in rec.error
    assert json.loads((tmp_path / f"{rec.job_id}.json").read_text())["state"] == "failed"
    assert m.get("job-00000000000000bb").state == JobState.RUNNING  # can't judge another host's process


def test_limits_and_ids(tmp_path):
    async def go():
        m = JobManager(None, max_concurrent=1)
        blocker = asyncio.Event()

        async def run(h):
            await blocker.wait()
            return None

        rec = m.submit("score", {}, 1, run)
        with pytest.raises(TooManyJobs):
            m.submit("score", {}, 1, run)
        blocker.set()
        await m.wait(rec.job_id, timeout=5)
        m.submit("score", {}, 1, run)  # room again
        await m.shutdown()

    asyncio.run(go())
    m = JobManager(None)
    for bad in ("../x", "job-", "job-0123", "JOB-0123456789abcdef", ""):
        with pytest.raises(BadId):
            m.get(bad)
    with pytest.raises(NotFound):
        m.get("job-0123456789abcdef")


def test_error_mapping_unwraps_remote_errors():
    from services.common.store import BatchNotFound, InvalidBatchId
    from services.generator.registry import UnknownModel

    class RemoteError(Exception):  # shaped like ray.exceptions.RayTaskError
        def __init__(self, cause):
            super().__init__("Traceback ... lots of remote frames")
            self.cause = cause

    assert api_error(RemoteError(UnknownModel("unknown model 'x'"))).http_status == 422
    internal = api_error(RemoteError(RuntimeError("boom /srv/secret/path")))
    assert internal.http_status == 500 and "boom" not in internal.message  # nothing internal is sent
    assert internal.summary.startswith("RuntimeError: boom") and "/srv/secret" not in internal.summary
    assert api_error(InvalidBatchId("bad")).http_status == 400
    assert api_error(BatchNotFound("gone")).http_status == 404


def test_grpc_loopback_guard():
    from services.gateway.net import peer_is_loopback as _peer_is_loopback

    assert _peer_is_loopback("ipv4:127.0.0.1:5555") and _peer_is_loopback("ipv6:[::1]:40000")
    assert _peer_is_loopback("unix:/tmp/sock")
    assert not _peer_is_loopback("ipv4:10.1.2.3:5555") and not _peer_is_loopback("ipv6:[2001:db8::1]:1")
    assert _peer_is_loopback("ipv6:[::ffff:127.0.0.1]:1") and not _peer_is_loopback("ipv4:127.0.0.1.example:1")
