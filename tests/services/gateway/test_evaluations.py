"""Evaluation jobs over REST and gRPC, in process: the real metrics core (per-finding fidelity with the
cxr-encoder) on batches of the tiny test generator, against a configured real dataset."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from fastapi.testclient import TestClient
from repo_paths import NIH64

from serving_fakes import GrpcEnv, TinyGenerator, make_platform, wait_job
from services.gateway.rest import create_app
from services.gateway.stubs import common_pb2, metrics_pb2

DATASETS = {"nih": {"path": str(NIH64), "layout": "nih", "split_by": "patient"}}
OPTIONS = {"extractor": "cxr-encoder", "min_group": 2}


def _batches(client, n: int = 6) -> list[str]:
    out = []
    for cond in ({"pleural_effusion": "present"}, {"pleural_effusion": "absent"}):
        job = client.post("/v1/batches", json={"count": n, "condition": cond}).json()
        out.append(wait_job(client, job["job_id"])["batch_id"])
    return out


@pytest.fixture
def env(tmp_path):
    platform, store, gen = make_platform(tmp_path, TinyGenerator("tiny", resolution=64),
                                         more=(TinyGenerator("other"),), datasets=DATASETS)
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        yield client, platform


def test_an_evaluation_job_runs_reports_progress_and_renders(env):
    client, platform = env
    kinds = client.get("/v1/evaluation-kinds").json()
    per = next(k for k in kinds if k["kind"] == "per-finding")
    assert per["needs_dataset"] and "data" not in per["options"]["properties"]  # paths never come from a client
    assert "extractor" in per["options"]["properties"]
    assert client.get("/v1/datasets").json() == ["nih"]
    ids = _batches(client)
    r = client.post("/v1/evaluations", json={"batch_ids": ids, "kind": "per-finding", "dataset": "nih",
                                             "options": OPTIONS})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/evaluations/{r.json()['job_id']}"
    job = wait_job(client, r.json()["job_id"], timeout=300)
    assert job["state"] == "succeeded", job
    assert job["done"] == job["total"] == 1000
    res = client.get(f"/v1/evaluations/{job['job_id']}").json()
    result = res["result"]
    assert result["kind"] == "per-finding" and result["subject"]["n"] == 12
    assert res["request"]["batch_ids"] == ids and "data" not in res["request"]["options"]
    groups = {(g["finding"], g["state"]): g for g in result["details"]["groups"]}
    assert groups[("pleural_effusion", "present")]["n_synthetic"] == 6
    assert "FD_cxr-encoder" in groups[("pleural_effusion", "present")]["scores"]
    assert result["provenance"]["data"]["dataset"] == "nih"
    assert str(NIH64) not in json.dumps(res)  # the server's path is not in the answer
    html = client.get(f"/v1/evaluations/{job['job_id']}/report")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "Per-finding fidelity" in html.text and "pleural_effusion" in html.text
    assert client.get("/v1/jobs?kind=evaluation").json()[0]["kind"] == "evaluation"


@pytest.mark.parametrize("body, needle", [
    ({"kind": "fidelity"}, "unknown evaluation 'fidelity'"),
    ({"kind": "per-finding", "dataset": "nih", "options": {"data": {"path": "/etc"}}}, "options.data cannot be sent"),
    ({"kind": "per-finding", "dataset": "chexpert"}, "unknown dataset 'chexpert'; configured datasets: nih"),
    ({"kind": "per-finding"}, "needs a labelled real dataset"),
    ({"kind": "per-finding", "dataset": "nih", "options": {"min_group": 0}}, "min_group"),
    ({"kind": "per-finding", "dataset": "nih", "options": {"extractor": 3}}, "extractor"),
])
def test_bad_evaluation_requests_are_422_naming_the_problem(env, body, needle):
    client, _ = env
    ids = _batches(client, 2)
    r = client.post("/v1/evaluations", json={"batch_ids": ids[:1], **body})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


def test_batches_must_exist_and_come_from_one_model(env):
    client, _ = env
    ids = _batches(client, 2)
    r = client.post("/v1/evaluations", json={"batch_ids": ["20261127t015959-0123456789ab"], "kind": "per-finding",
                                             "dataset": "nih"})
    assert r.status_code == 404
    other = wait_job(client, client.post("/v1/batches", json={"count": 2, "model": "other"}).json()["job_id"])
    r = client.post("/v1/evaluations", json={"batch_ids": [ids[0], other["batch_id"]], "kind": "per-finding",
                                             "dataset": "nih"})
    assert r.status_code == 422 and "different models" in r.json()["detail"]
    assert client.post("/v1/evaluations", json={"batch_ids": [], "kind": "bias"}).status_code == 422
    assert client.post("/v1/evaluations", json={"batch_ids": ["../x"], "kind": "bias"}).status_code == 422


def test_grpc_evaluation(tmp_path):
    async def go():
        async with GrpcEnv(tmp_path, TinyGenerator("tiny", resolution=64), datasets=DATASETS) as env:
            from services.gateway.stubs import batch_pb2

            kinds = await env.metrics_stub.ListEvaluationKinds(metrics_pb2.ListEvaluationKindsRequest())
            assert "per-finding" in [k.kind for k in kinds.kinds]
            assert (await env.metrics_stub.ListDatasets(metrics_pb2.ListDatasetsRequest())).datasets == ["nih"]
            ids = []
            for state in (common_pb2.FINDING_STATE_PRESENT, common_pb2.FINDING_STATE_ABSENT):
                job = await env.batch_stub.CreateBatch(batch_pb2.CreateBatchRequest(
                    count=4, condition=common_pb2.Condition(pleural_effusion=state)))
                [j async for j in env.batch_stub.WatchJob(common_pb2.GetJobRequest(job_id=job.job_id))]
                ids.append((await env.batch_stub.GetJob(common_pb2.GetJobRequest(job_id=job.job_id))).batch_id)
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await env.metrics_stub.CreateEvaluation(metrics_pb2.CreateEvaluationRequest(
                    batch_ids=ids, kind="per-finding", dataset="nih", options_json="{min_group: 2"))
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "options_json is not JSON" in ei.value.details()
            ej = await env.metrics_stub.CreateEvaluation(metrics_pb2.CreateEvaluationRequest(
                batch_ids=ids, kind="per-finding", dataset="nih", options_json=json.dumps(OPTIONS)))
            [j async for j in env.batch_stub.WatchJob(common_pb2.GetJobRequest(job_id=ej.job_id))]
            res = await env.metrics_stub.GetEvaluation(common_pb2.GetJobRequest(job_id=ej.job_id))
            assert res.state == common_pb2.JOB_STATE_SUCCEEDED, res.error
            assert list(res.batch_ids) == ids and res.kind == "per-finding"
            names = {h.name: h for h in res.headline}
            assert "FD_cxr-encoder (all)" in names and names["FD_cxr-encoder (all)"].HasField("value")
            assert json.loads(res.result_json)["subject"]["n"] == 8

    asyncio.run(go())
