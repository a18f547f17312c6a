"""Near-copy screening of stored batches over REST and gRPC (the model's shipped training-set index)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fastapi.testclient import TestClient

from serving_fakes import GrpcEnv, TinyGenerator, make_platform, wait_job
from services.gateway.rest import create_app
from services.gateway.stubs import batch_pb2, common_pb2


@pytest.fixture(scope="module")
def sg2():
    from services.generator import registry

    return registry.load_generator("stylegan2-cxr64", "eager", "cpu")


def test_a_screened_batch_records_its_screening(tmp_path, sg2):
    platform, store, _ = make_platform(tmp_path, TinyGenerator("tiny"), more=(sg2,))
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        r = client.post("/v1/batches", json={"model": "stylegan2-cxr64", "count": 4, "seed": 7, "screen": "flag"})
        assert r.status_code == 202, r.text
        job = wait_job(client, r.json()["job_id"], timeout=120)
        assert job["state"] == "succeeded", job
        man = client.get(f"/v1/batches/{job['batch_id']}").json()
        scr = man["screening"]
        assert scr["action"] == "flag" and scr["index"] == "nih-cxr64-train" and scr["spaces"] == ["pixel"]
        assert all(isinstance(im["near_copy"], bool) for im in man["images"]) and man["count"] == 4
        plain = wait_job(client, client.post("/v1/batches", json={"model": "stylegan2-cxr64", "count": 2}).json()["job_id"])
        man = client.get(f"/v1/batches/{plain['batch_id']}").json()
        assert "screening" not in man and "near_copy" not in man["images"][0]  # unscreened batches read as before
        r = client.post("/v1/batches", json={"model": "tiny", "count": 2, "screen": "drop"})
        assert r.status_code == 422 and "no training-set index" in r.json()["detail"]
        r = client.post("/v1/batches", json={"model": "tiny", "count": 2, "screen": "maybe"})
        assert r.status_code == 422
        r = client.post("/v1/generate", json={"count": 1, "screen": "flag"})
        assert r.status_code == 422  # inline generation is never screened: the field does not exist there


def test_grpc_screen_field(tmp_path):
    async def go():
        async with GrpcEnv(tmp_path) as env:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(count=2, screen="sometimes"))
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "flag or drop" in ei.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(count=2, screen="flag"))
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no training-set index" in ei.value.details()
            job = await env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(count=2))
            [j async for j in env.batch_stub.WatchJob(common_pb2.GetJobRequest(job_id=job.job_id))]
            bid = (await env.batch_stub.GetJob(common_pb2.GetJobRequest(job_id=job.job_id))).batch_id
            b = await env.batch_stub.GetBatch(batch_pb2.GetBatchRequest(batch_id=bid))
            assert b.screening_json == "" and not b.images[0].HasField("near_copy")

    asyncio.run(go())
