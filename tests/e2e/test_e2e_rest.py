"""End to end over REST through Ray Serve (slow: shares one Ray instance per session)."""

from __future__ import annotations

import io
import tarfile
from functools import partial

import httpx
import numpy as np
import pytest
import serving_fakes

pytestmark = pytest.mark.slow

FINDINGS = ("atelectasis", "lung_opacity", "pleural_effusion", "enlarged_cardiac_silhouette")


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served.http_url, timeout=120) as c:
        yield c


wait_job = partial(serving_fakes.wait_job, timeout=600, poll=0.25)  # through Ray: slower jobs, slower polls


def test_models_health_openapi(client, served):
    assert client.get("/v1/healthz").json() == {"status": "ok"}
    ready = client.get("/v1/readyz").json()
    assert ready["ready"], ready
    ids = [m["model_id"] for m in client.get("/v1/models").json()]
    assert {"tiny", "tiny-fail"} <= set(ids)
    assert "/v1/batches" in client.get("/openapi.json").json()["paths"]


def test_main_job_one_batch_per_finding(client, served):
    """What `synthrad demo` does: a batch per finding from the default model, scored when a reference exists."""
    model = served.real_model or "tiny"
    refs = client.get("/v1/references").json()
    for finding in FINDINGS:
        r = client.post("/v1/batches", json={"model": model, "condition": {finding: "present"}, "count": 8,
                                              "seed": 1000, "format": "png"})
        assert r.status_code == 202, r.text
        job = wait_job(client, r.json()["job_id"])
        assert job["state"] == "succeeded", job
        man = client.get(f"/v1/batches/{job['batch_id']}").json()
        assert man["count"] == 8 and all(im["condition"][finding] == "present" for im in man["images"])
        assert man["model_id"] == model
        if served.real_model and "nih-cxr64" in refs and finding == FINDINGS[0]:
            s = client.post("/v1/scores", json={"batch_id": job["batch_id"], "reference": "nih-cxr64",
                                                 "metrics": ["fid"]})
            assert s.status_code == 202, s.text
            sj = wait_job(client, s.json()["job_id"])
            assert sj["state"] == "succeeded", sj
            res = client.get(f"/v1/scores/{sj['job_id']}").json()["result"]
            assert res["extractor"] and res["scores"], res


def test_inline_generation_is_deterministic_through_batching(client):
    def npz(count, seed):
        r = client.post("/v1/generate", json={"model": "tiny", "count": count, "seed": seed, "format": "npz",
                                              "condition": {"pleural_effusion": "present"}})
        assert r.status_code == 200, r.text
        return np.load(io.BytesIO(r.content))["images"]

    four = npz(4, 40)
    np.testing.assert_array_equal(npz(1, 42)[0], four[2])


def test_failing_replica_job_is_failed_and_not_stored(client):
    before = {b["batch_id"] for b in client.get("/v1/batches").json()}
    job = wait_job(client, client.post("/v1/batches", json={"model": "tiny-fail", "count": 40, "seed": 0}).json()["job_id"])
    assert job["state"] == "failed" and "seed 13" in job["error"] and job["batch_id"] is None
    assert {b["batch_id"] for b in client.get("/v1/batches").json()} == before


def test_errors_and_download(client):
    r = client.post("/v1/generate", json={"model": "nope", "count": 1})
    assert r.status_code == 422 and "nope" in r.json()["detail"]
    r = client.post("/v1/generate", json={"model": "tiny", "condition": {"pneumothorax": "present"}})
    assert r.status_code == 422 and "pneumothorax" in r.json()["detail"]
    assert client.get("/v1/batches/..%2F..%2Fetc").status_code in (400, 404)
    assert client.get("/v1/batches/bad-id").status_code == 400
    job = wait_job(client, client.post("/v1/batches", json={"model": "tiny", "count": 5, "format": "webdataset"}).json()["job_id"])
    with tarfile.open(fileobj=io.BytesIO(client.get(f"/v1/batches/{job['batch_id']}/download").content)) as tar:
        assert any(n.endswith("manifest.json") for n in tar.getnames())


def test_metrics_endpoint_shows_named_metrics(client):
    client.post("/v1/generate", json={"model": "tiny", "count": 2, "condition": {"no_finding": True}})
    text = client.get("/metrics").text
    for name in ("synthrad_images_generated_total", "synthrad_generation_latency_seconds_bucket",
                 "synthrad_generation_batch_size_bucket", "synthrad_generation_queue_depth", "synthrad_jobs{",
                 "synthrad_generation_queue_seconds_bucket"):
        assert name in text, name
    assert 'finding="no_finding",model="tiny"' in text


def test_demo_command_against_the_running_platform(served, tmp_path):
    """`synthrad demo --url` runs the main job over REST against this session's platform."""
    import json

    from click.testing import CliRunner

    from synthrad.cli.demo_cmd import command

    with httpx.Client(base_url=served.http_url, timeout=60) as c:
        refs = c.get("/v1/references").json()
    if not refs:
        pytest.skip("no reference set registered yet")
    ref = "nih-cxr64" if "nih-cxr64" in refs else refs[0]
    model = served.real_model or "tiny"
    out = tmp_path / "demo.json"
    res = CliRunner().invoke(command, ["--url", served.http_url, "--model", model, "--count", "8", "--reference", ref,
                                       "--metrics", "fid", "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert [r["finding"] for r in doc["results"]] == ["atelectasis", "lung_opacity", "pleural_effusion",
                                                      "enlarged_cardiac_silhouette"]
    assert all(r["scores"][0]["name"] == "FID" for r in doc["results"])  # inception extractor -> called FID
    assert "FID" in res.output and "extractor inception" in res.output


def test_evaluation_job_streams_progress_through_serve(client, served):
    """An evaluation runs on the metrics deployment (a streaming call: progress, then the result) and is
    read back as a job, its report as HTML."""
    model = served.real_model or "tiny"
    ids = []
    for state in ("present", "absent"):
        r = client.post("/v1/batches", json={"model": model, "condition": {"pleural_effusion": state}, "count": 8,
                                              "seed": 5000})
        ids.append(wait_job(client, r.json()["job_id"])["batch_id"])
    r = client.post("/v1/evaluations", json={"batch_ids": ids, "kind": "conditioning"})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert job["done"] == job["total"]
    res = client.get(f"/v1/evaluations/{job['job_id']}").json()["result"]
    assert res["kind"] == "conditioning" and res["subject"]["n"] == 16
    assert res["provenance"]["classifier"]["weights_sha256"]
    report = client.get(f"/v1/evaluations/{job['job_id']}/report")
    assert report.status_code == 200 and "conditioning" in report.text
    bad = client.post("/v1/evaluations", json={"batch_ids": ids, "kind": "utility"})
    assert bad.status_code == 422 and "needs a labelled real dataset" in bad.json()["detail"]
