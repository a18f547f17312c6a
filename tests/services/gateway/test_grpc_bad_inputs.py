"""Every bad gRPC input is INVALID_ARGUMENT (or NOT_FOUND) naming the problem, never INTERNAL (no Ray).

The real servicer on a plain ``grpc.aio`` server on 127.0.0.1, tiny test generators, the in-process Platform.
Every field of every RPC gets out-of-range values: zero / huge counts, huge seeds, unknown enum values, empty and
malformed ids, contradictory conditions, unknown metrics and extractors, NaN params.
"""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest

from serving_fakes import GanLikeGenerator, GrpcEnv, TinyGenerator
from services.gateway.stubs import batch_pb2, common_pb2, generator_pb2, metrics_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
P = common_pb2.FINDING_STATE_PRESENT


class NativeOnly(TinyGenerator):
    max_resize_factor = 1  # like its generate(): 32 px only


class NativeOnlyGan(GanLikeGenerator):
    max_resize_factor = 1


class Env(GrpcEnv):
    def __init__(self, tmp_path):
        self.tiny, self.gan = NativeOnly("tiny"), NativeOnlyGan("gan")
        super().__init__(tmp_path, self.tiny, more=(self.gan,))

    async def stored_batch(self) -> str:
        job = await self.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(count=2))
        async for j in self.batch_stub.WatchJob(common_pb2.GetJobRequest(job_id=job.job_id)):
            last = j
        assert last.state == common_pb2.JOB_STATE_SUCCEEDED, last
        return last.batch_id


async def expect(call, code: grpc.StatusCode, *needles: str) -> str:
    """Await a unary call (or drain a stream) and check it fails with ``code`` naming every needle."""
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        res = call
        if hasattr(res, "__aiter__"):
            async for _ in res:
                pass
        else:
            await res
    err = ei.value
    assert err.code() == code, (err.code(), err.details())
    details = err.details() or ""
    for n in needles:
        assert n.lower() in details.lower(), (n, details)
    assert "Traceback" not in details and len(details) <= 2100
    return details


def cond(**kw) -> common_pb2.Condition:
    by_name = kw.pop("by_name", {})
    c = common_pb2.Condition(**kw)
    for k, v in by_name.items():
        c.by_name[k] = v
    return c


def gp(**kw) -> common_pb2.GenerationParams:
    return common_pb2.GenerationParams(**kw)


GENERATE_CASES = [
    # condition: contradictions, unknown names, enum values outside FindingState
    (dict(condition=cond(no_finding=True, pleural_effusion=P)), ("no_finding", "pleural_effusion")),
    (dict(condition=cond(no_finding=True, by_name={"cardiomegaly": P})), ("no_finding", "enlarged_cardiac_silhouette")),
    (dict(condition=cond(by_name={"no_finding": P, "effusion": P})), ("no_finding", "pleural_effusion")),
    (dict(condition=cond(atelectasis=P, by_name={"atelectasis": common_pb2.FINDING_STATE_ABSENT})),
     ("atelectasis", "twice")),
    (dict(condition=cond(by_name={"pneumothorax": P})), ("pneumothorax", "known findings")),
    (dict(condition=cond(by_name={"": P})), ("unknown finding",)),
    (dict(condition=cond(atelectasis=7)), ("invalid state 7", "atelectasis", "FINDING_STATE_PRESENT")),
    (dict(condition=cond(by_name={"opacity": 99})), ("invalid state 99", "opacity")),
    # counts, seeds
    (dict(count=0), ("count",)),
    (dict(count=2**32 - 1), ("count", "limit")),
    (dict(seed=2**64 - 1), ("seed",)),
    (dict(seed=2**63 - 1, count=2), ("seed",)),
    # params: bounds, NaN, unknown sampler, unused by the family, sizes the model cannot make
    (dict(params=gp(steps=0)), ("params.steps",)),
    (dict(params=gp(steps=2**32 - 1)), ("params.steps",)),
    (dict(params=gp(guidance=math.nan)), ("params.guidance", "finite")),
    (dict(params=gp(guidance=math.inf)), ("params.guidance",)),
    (dict(params=gp(truncation=-1.0)), ("params.truncation",)),
    (dict(params=gp(sampler="bogus")), ("params.sampler",)),
    (dict(params=gp(resolution=0)), ("params.resolution",)),
    (dict(params=gp(resolution=2**32 - 1)), ("resolution",)),
    (dict(params=gp(resolution=64)), ("64", "32 only")),
    (dict(model_id="gan", params=gp(sampler="ddim")), ("sampler", "gan")),
    # model, prompt, encoding
    (dict(model_id="nope"), ("nope", "tiny")),
    (dict(model_id="x" * 100_000), ("unknown model",)),
    (dict(prompt="p" * 3000), ("prompt", "2000")),
    (dict(prompt="zebra crossing"), ("understood",)),
    (dict(prompt="effusion", condition=cond(atelectasis=P)), ("either",)),
    (dict(encoding=99), ("encoding 99", "IMAGE_ENCODING_PNG16")),
]


@pytest.mark.parametrize("fields, needles", GENERATE_CASES, ids=[str(i) for i in range(len(GENERATE_CASES))])
def test_generate_and_stream_refuse_bad_fields(tmp_path, fields, needles):
    async def go():
        async with Env(tmp_path) as env:
            req = generator_pb2.GenerateRequest(**{"count": 1, **fields})
            await expect(env.gen_stub.Generate(req), INVALID, *needles)
            await expect(env.gen_stub.StreamGenerate(req), INVALID, *needles)
            breq = batch_pb2.CreateBatchRequest(**{k: v for k, v in {"count": 1, **fields}.items() if k != "encoding"})
            if "encoding" not in fields:
                await expect(env.batch_stub.CreateBatch(breq), INVALID, *needles)
            jobs = await env.batch_stub.ListJobs(common_pb2.ListJobsRequest())
            assert list(jobs.jobs) == [] and env.tiny.calls == [] and env.gan.calls == []  # refused up front

    asyncio.run(go())


def test_create_batch_refuses_unknown_format_and_oversized_counts(tmp_path):
    async def go():
        async with Env(tmp_path) as env:
            await expect(env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(count=1, format=42)), INVALID,
                         "format 42", "BATCH_FORMAT_WEBDATASET")
            await expect(env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(count=10_001)), INVALID, "10001")
            await expect(env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(count=0)), INVALID, "count")
            ok = await env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(count=1, params=gp(resolution=32)))
            assert ok.state in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING,
                                common_pb2.JOB_STATE_SUCCEEDED)

    asyncio.run(go())


def id_cases(kind: str, malformed: list[str], unknown: str) -> list[tuple[str, grpc.StatusCode, str]]:
    """(id, code, needle): each malformed id is INVALID_ARGUMENT "invalid <kind> id", then one well-formed id of
    nothing stored is NOT_FOUND."""
    return [*((i, INVALID, f"invalid {kind} id") for i in malformed), (unknown, NOT_FOUND, "not found")]


@pytest.mark.parametrize("job_id, code, needle", id_cases(
    "job", ["", "job-xyz", "../../etc/passwd", "job-0123456789ABCDEF", "j" * 10_000], "job-0123456789abcdef"))
def test_job_ids(tmp_path, job_id, code, needle):
    async def go():
        async with Env(tmp_path) as env:
            req = common_pb2.GetJobRequest(job_id=job_id)
            await expect(env.batch_stub.GetJob(req), code, needle)
            await expect(env.batch_stub.WatchJob(req), code, needle)
            await expect(env.metrics_stub.GetScore(req), code, needle)

    asyncio.run(go())


@pytest.mark.parametrize("batch_id, code, needle", id_cases(
    "batch", ["", "not-a-batch", "../../etc", "20261127T015959-0123456789ab", "b" * 10_000],
    "20261127t015959-0123456789ab"))
def test_batch_ids(tmp_path, batch_id, code, needle):
    async def go():
        async with Env(tmp_path) as env:
            req = batch_pb2.GetBatchRequest(batch_id=batch_id)
            details = await expect(env.batch_stub.GetBatch(req), code, needle)
            assert str(tmp_path) not in details  # the store's location is not the client's business
            await expect(env.batch_stub.DeleteBatch(req), code, needle)
            await expect(env.batch_stub.StreamBatchImages(batch_pb2.StreamBatchImagesRequest(batch_id=batch_id)), code,
                         needle)
            await expect(env.metrics_stub.CreateScore(metrics_pb2.CreateScoreRequest(batch_id=batch_id)), code, needle)

    asyncio.run(go())


def test_stream_batch_images_refuses_an_unknown_encoding(tmp_path):
    async def go():
        async with Env(tmp_path) as env:
            bid = await env.stored_batch()
            await expect(env.batch_stub.StreamBatchImages(batch_pb2.StreamBatchImagesRequest(batch_id=bid, encoding=5)),
                         INVALID, "encoding 5")
            got = [m async for m in env.batch_stub.StreamBatchImages(batch_pb2.StreamBatchImagesRequest(batch_id=bid))]
            assert len(got) == 2

    asyncio.run(go())


def test_list_jobs_kind(tmp_path):
    async def go():
        async with Env(tmp_path) as env:
            await expect(env.batch_stub.ListJobs(common_pb2.ListJobsRequest(kind="everything")), INVALID, "everything",
                         "batch, score or evaluation")

    asyncio.run(go())


def test_create_score_checks_metrics_extractor_and_reference_at_submission(tmp_path):
    from services.metrics.api import ALL_METRICS
    from services.metrics.extractors import available_extractors

    async def go():
        async with Env(tmp_path) as env:
            bid = await env.stored_batch()

            def req(**kw):
                return metrics_pb2.CreateScoreRequest(batch_id=bid, reference="fake-ref", **kw)

            details = await expect(env.metrics_stub.CreateScore(req(metrics=["fid", "fidd"])), INVALID, "fidd")
            assert all(m in details for m in ALL_METRICS)
            details = await expect(env.metrics_stub.CreateScore(req(extractor="resnet")), INVALID, "resnet")
            assert all(x in details for x in available_extractors())
            await expect(env.metrics_stub.CreateScore(req(metrics=[""])), INVALID, "no metrics")
            await expect(env.metrics_stub.CreateScore(req(metrics=["x" * 100_000])), INVALID, "unknown metric")
            await expect(env.metrics_stub.CreateScore(metrics_pb2.CreateScoreRequest(batch_id=bid, reference="nope")),
                         INVALID, "nope", "fake-ref")
            before = await env.batch_stub.ListJobs(common_pb2.ListJobsRequest(kind="score"))
            assert list(before.jobs) == []  # nothing was queued by the refused requests
            job = await env.metrics_stub.CreateScore(req())  # no metrics given = the default (fid)
            assert '"metrics": ["fid"]' in job.request_json and job.kind == "score"
            # a batch job is not a scoring job
            batch_job = (await env.batch_stub.ListJobs(common_pb2.ListJobsRequest(kind="batch"))).jobs[0]
            await expect(env.metrics_stub.GetScore(common_pb2.GetJobRequest(job_id=batch_job.job_id)), NOT_FOUND,
                         "not a scoring job")

    asyncio.run(go())


def test_server_failure_is_internal_with_an_error_id_only(tmp_path, caplog):
    async def go():
        async with Env(tmp_path) as env:
            async def broken():
                raise RuntimeError("cannot reach 10.9.8.7:6379 from /opt/synthrad/secret.cfg (pid=31337)")

            env.platform.model_infos = broken
            details = await expect(env.gen_stub.ListModels(generator_pb2.ListModelsRequest()), grpc.StatusCode.INTERNAL,
                                   "internal error")
            for secret in ("10.9.8.7", "/opt/synthrad", "31337", "RuntimeError"):
                assert secret not in details
            return details

    details = asyncio.run(go())
    error_id = details.split()[2].rstrip(":")
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
