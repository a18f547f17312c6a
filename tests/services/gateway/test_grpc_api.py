"""gRPC API in process: the real servicer on a plain grpc.aio server, tiny test generator, no Ray."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from serving_fakes import GanLikeGenerator, GrpcEnv as Env, TinyGenerator, make_platform
from services.common.findings import Condition
from services.gateway.grpc_api import condition_from_pb, condition_to_pb, decode_pb_image
from services.gateway.stubs import batch_pb2, common_pb2, generator_pb2, metrics_pb2


def run(coro):
    return asyncio.run(coro)


def test_condition_round_trip_and_aliases():
    c = Condition(pleural_effusion="present", enlarged_cardiac_silhouette="absent")
    assert condition_from_pb(condition_to_pb(c)) == c
    pb = common_pb2.Condition(atelectasis=common_pb2.FINDING_STATE_PRESENT)
    pb.by_name["cardiomegaly"] = common_pb2.FINDING_STATE_ABSENT
    assert condition_from_pb(pb) == Condition(atelectasis="present", enlarged_cardiac_silhouette="absent")
    assert condition_from_pb(common_pb2.Condition(no_finding=True)).is_no_finding


def test_models_generate_and_stream(tmp_path):
    async def go():
        async with Env(tmp_path) as env:
            models = await env.gen_stub.ListModels(generator_pb2.ListModelsRequest())
            assert [m.model_id for m in models.models] == ["tiny"] and models.models[0].is_default
            cond = common_pb2.Condition(pleural_effusion=common_pb2.FINDING_STATE_PRESENT)
            resp = await env.gen_stub.Generate(generator_pb2.GenerateRequest(
                condition=cond, count=3, seed=20, encoding=common_pb2.IMAGE_ENCODING_FLOAT32))
            assert [im.seed for im in resp.images] == [20, 21, 22]
            img = decode_pb_image(resp.images[1])
            expect = env.gen.generate([Condition(pleural_effusion="present")], [21])[0]
            np.testing.assert_array_equal(img, expect)
            png = await env.gen_stub.Generate(generator_pb2.GenerateRequest(count=1, seed=20, condition=cond))
            assert png.images[0].encoding == common_pb2.IMAGE_ENCODING_PNG16
            np.testing.assert_allclose(decode_pb_image(png.images[0]), decode_pb_image(resp.images[0]), atol=1e-4)
            # beyond the inline limit: server streaming, one message per image, in order
            got = [m async for m in env.gen_stub.StreamGenerate(generator_pb2.GenerateRequest(
                count=40, seed=5, prompt="No pleural effusion", encoding=common_pb2.IMAGE_ENCODING_PNG8))]
            assert [m.index for m in got] == list(range(40)) and [m.seed for m in got] == list(range(5, 45))
            assert got[0].condition.pleural_effusion == common_pb2.FINDING_STATE_ABSENT
            ready = await env.gen_stub.Ready(generator_pb2.ReadyRequest())
            assert ready.ready and ready.components["generator:tiny"] == "ok"

    run(go())


@pytest.mark.parametrize("req, needle", [
    (generator_pb2.GenerateRequest(model_id="nope", count=1), "nope"),
    (generator_pb2.GenerateRequest(count=17), "17"),
    (generator_pb2.GenerateRequest(count=0), "count"),
    (generator_pb2.GenerateRequest(count=1, prompt="zebra crossing"), "understood"),
    (generator_pb2.GenerateRequest(count=1, params=common_pb2.GenerationParams(steps=5000)), "steps"),
])
def test_invalid_argument_names_the_problem(tmp_path, req, needle):
    async def go():
        async with Env(tmp_path) as env:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await env.gen_stub.Generate(req)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert needle in ei.value.details()

    run(go())


def test_params_the_model_does_not_use_are_invalid(tmp_path):
    async def go():
        async with Env(tmp_path, gen=GanLikeGenerator("tiny")) as env:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await env.gen_stub.Generate(generator_pb2.GenerateRequest(
                    count=1, params=common_pb2.GenerationParams(sampler="ddim")))
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sampler" in ei.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(
                    count=2, params=common_pb2.GenerationParams(guidance=3.0)))
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "guidance" in ei.value.details()
            assert env.gen.calls == []

    run(go())


def test_unknown_finding_by_name(tmp_path):
    async def go():
        async with Env(tmp_path) as env:
            cond = common_pb2.Condition()
            cond.by_name["pneumothorax"] = common_pb2.FINDING_STATE_PRESENT
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await env.gen_stub.Generate(generator_pb2.GenerateRequest(count=1, condition=cond))
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "pneumothorax" in ei.value.details()

    run(go())


def test_batch_job_watch_get_stream_delete(tmp_path):
    async def go():
        async with Env(tmp_path) as env:
            job = await env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(
                count=20, seed=3, format=batch_pb2.BATCH_FORMAT_NPZ,
                condition=common_pb2.Condition(atelectasis=common_pb2.FINDING_STATE_PRESENT)))
            assert job.state in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING) and job.total == 20
            updates = [j async for j in env.batch_stub.WatchJob(common_pb2.GetJobRequest(job_id=job.job_id))]
            assert updates[-1].state == common_pb2.JOB_STATE_SUCCEEDED and updates[-1].done == 20
            dones = [u.done for u in updates]
            assert dones == sorted(dones)
            bid = updates[-1].batch_id
            batch = await env.batch_stub.GetBatch(batch_pb2.GetBatchRequest(batch_id=bid))
            assert batch.count == 20 and batch.format == "npz" and batch.images[4].seed == 7
            listed = await env.batch_stub.ListBatches(batch_pb2.ListBatchesRequest())
            assert [b.batch_id for b in listed.batches] == [bid] and not listed.batches[0].images
            imgs = [m async for m in env.batch_stub.StreamBatchImages(batch_pb2.StreamBatchImagesRequest(
                batch_id=bid, encoding=common_pb2.IMAGE_ENCODING_FLOAT32))]
            assert len(imgs) == 20
            np.testing.assert_allclose(decode_pb_image(imgs[0]),
                                       env.gen.generate([Condition(atelectasis="present")], [3])[0], atol=1e-6)
            jobs = await env.batch_stub.ListJobs(common_pb2.ListJobsRequest(kind="batch"))
            assert jobs.jobs[0].job_id == job.job_id
            # scoring through the metrics service
            refs = await env.metrics_stub.ListReferences(metrics_pb2.ListReferencesRequest())
            assert list(refs.references) == ["fake-ref"]
            sj = await env.metrics_stub.CreateScore(metrics_pb2.CreateScoreRequest(batch_id=bid, reference="fake-ref"))
            [j async for j in env.batch_stub.WatchJob(common_pb2.GetJobRequest(job_id=sj.job_id))]
            score = await env.metrics_stub.GetScore(common_pb2.GetJobRequest(job_id=sj.job_id))
            assert score.batch_id == bid and score.n_synthetic == 20 and score.scores[0].name == "mean_intensity"
            assert score.extractor.name == "inception"
            deleted = await env.batch_stub.DeleteBatch(batch_pb2.GetBatchRequest(batch_id=bid))
            assert deleted.deleted
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await env.batch_stub.GetBatch(batch_pb2.GetBatchRequest(batch_id=bid))
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND
            for bad in ("../../etc", "x", ""):
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await env.batch_stub.GetBatch(batch_pb2.GetBatchRequest(batch_id=bad))
                assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await env.batch_stub.GetJob(common_pb2.GetJobRequest(job_id="job-0000000000000000"))
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND

    run(go())


def test_failed_job_over_grpc(tmp_path):
    async def go():
        async with Env(tmp_path, gen=TinyGenerator("tiny", fail_seeds={30})) as env:
            job = await env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(count=40, seed=0))
            final = [j async for j in env.batch_stub.WatchJob(common_pb2.GetJobRequest(job_id=job.job_id))][-1]
            assert final.state == common_pb2.JOB_STATE_FAILED and "seed 30" in final.error and not final.batch_id
            assert env.store.list() == []

    run(go())


def test_grpc_api_keys(tmp_path):
    async def go():
        async with Env(tmp_path, api_keys=["k1"]) as env:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await env.gen_stub.ListModels(generator_pb2.ListModelsRequest())
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = await env.gen_stub.ListModels(generator_pb2.ListModelsRequest(), metadata=(("x-api-key", "k1"),))
            assert ok.models
            ok = await env.gen_stub.ListModels(generator_pb2.ListModelsRequest(),
                                               metadata=(("authorization", "Bearer k1"),))
            assert ok.models

    run(go())


async def _stored_batch(env, count: int = 4) -> str:
    job = await env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(count=count, seed=1))
    final = [j async for j in env.batch_stub.WatchJob(common_pb2.GetJobRequest(job_id=job.job_id))][-1]
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final
    return final.batch_id


def test_get_score_of_a_failed_job_is_ok_with_state_and_error(tmp_path):
    """A finished-but-failed scoring job is a successful read of a failed result (as REST's 200 + state failed)."""
    async def go():
        async with Env(tmp_path) as env:
            bid = await _stored_batch(env)

            async def broken(*args):
                raise ValueError("the reference features are unreadable")

            env.platform.scorer.score = broken
            sj = await env.metrics_stub.CreateScore(metrics_pb2.CreateScoreRequest(batch_id=bid, reference="fake-ref"))
            [j async for j in env.batch_stub.WatchJob(common_pb2.GetJobRequest(job_id=sj.job_id))]
            score = await env.metrics_stub.GetScore(common_pb2.GetJobRequest(job_id=sj.job_id))
            assert score.state == common_pb2.JOB_STATE_FAILED and score.job_id == sj.job_id
            assert "ValueError" in score.error and "error id" in score.error  # the job's error (scrubbed summary)
            assert not score.scores and score.result_json == "" and score.batch_id == bid
            job = await env.batch_stub.GetJob(common_pb2.GetJobRequest(job_id=sj.job_id))
            assert job.error == score.error  # the same record as GetJob

    run(go())


def test_get_score_while_running_is_failed_precondition(tmp_path):
    async def go():
        async with Env(tmp_path) as env:
            bid = await _stored_batch(env)
            release = asyncio.Event()
            real = env.platform.scorer.score

            async def slow(*args):
                await release.wait()
                return await real(*args)

            env.platform.scorer.score = slow
            sj = await env.metrics_stub.CreateScore(metrics_pb2.CreateScoreRequest(batch_id=bid, reference="fake-ref"))
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await env.metrics_stub.GetScore(common_pb2.GetJobRequest(job_id=sj.job_id))
            assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "poll again" in ei.value.details()
            release.set()
            [j async for j in env.batch_stub.WatchJob(common_pb2.GetJobRequest(job_id=sj.job_id))]
            score = await env.metrics_stub.GetScore(common_pb2.GetJobRequest(job_id=sj.job_id))
            assert score.state == common_pb2.JOB_STATE_SUCCEEDED and score.error == "" and score.scores

    run(go())


def test_score_to_pb_reads_the_stamp_once():
    from services.gateway.grpc_api import stamp_to_pb

    new = stamp_to_pb({"name": "inception", "weights_sha256": "ab" * 32, "preprocessing": {"size": 299},
                       "dtype": "float32"})
    assert new.weights_hash == "ab" * 32 and new.preprocessing == '{"size": 299}' and new.dtype == "float32"
    assert stamp_to_pb({"name": "x", "weights_hash": "cd"}).weights_hash == "cd"  # records of older gateways
    assert stamp_to_pb("inception").name == "inception" and stamp_to_pb(None).name == ""


class FakeServeContext:
    """The parts of Serve's RayServegRPCContext the ingress methods use."""

    def __init__(self, peer: str = "ipv4:127.0.0.1:5555", metadata=()):
        self._peer, self._md = peer, list(metadata)
        self.code, self.details = None, None

    def peer(self):
        return self._peer

    def invocation_metadata(self):
        return self._md

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


def test_serve_ingress_methods(tmp_path):
    """The methods Serve's gRPC proxy calls by name: generated from the protos over the same GrpcApi."""
    from services.gateway.grpc_api import GrpcApi
    from services.gateway.grpc_servicer import GrpcFailure, GrpcIngress

    async def go():
        platform, store, gen = make_platform(tmp_path, TinyGenerator("tiny"))
        ingress = GrpcIngress()
        ingress.serve_grpc(GrpcApi(platform), loopback_only=True)
        models = await ingress.ListModels(generator_pb2.ListModelsRequest(), grpc_context=FakeServeContext())
        assert [m.model_id for m in models.models] == ["tiny"]
        got = [m async for m in ingress.StreamGenerate(generator_pb2.GenerateRequest(count=3, seed=4),
                                                       grpc_context=FakeServeContext("ipv6:[::1]:4000"))]
        assert [m.seed for m in got] == [4, 5, 6]
        # errors: the status is set on Serve's context (the proxy sends it), and the call raises
        ctx = FakeServeContext()
        with pytest.raises(GrpcFailure):
            await ingress.GetBatch(batch_pb2.GetBatchRequest(batch_id="../../etc"), grpc_context=ctx)
        assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT and "invalid batch id" in ctx.details
        # local mode: peers that are not on this machine are refused, unary and streaming alike
        for call in (ingress.ListModels(generator_pb2.ListModelsRequest(), grpc_context=(ctx := FakeServeContext(
                "ipv4:10.1.2.3:5555"))),):
            with pytest.raises(GrpcFailure):
                await call
            assert ctx.code == grpc.StatusCode.UNAUTHENTICATED and "API key" in ctx.details
        ctx = FakeServeContext("ipv4:10.1.2.3:5555")
        with pytest.raises(GrpcFailure):
            [m async for m in ingress.StreamGenerate(generator_pb2.GenerateRequest(count=1), grpc_context=ctx)]
        assert ctx.code == grpc.StatusCode.UNAUTHENTICATED
        # a deployment-handle call has no gRPC context: no peer to judge
        assert (await ingress.Ready(generator_pb2.ReadyRequest())).ready
        await platform.shutdown()

    run(go())
