"""REST gateway in process (no Ray): the same Platform the Serve app runs, with a tiny test generator."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving_fakes import GanLikeGenerator, TinyGenerator, make_platform, wait_job
from services.common.codecs.png import decode_png
from services.common.findings import Condition
from services.gateway.rest import create_app


@pytest.fixture
def env(tmp_path):
    platform, store, gen = make_platform(tmp_path)
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        yield client, store, gen, platform


def test_models_and_openapi(env):
    client, *_ = env
    models = client.get("/v1/models").json()
    assert [m["model_id"] for m in models] == ["tiny"]
    assert models[0]["is_default"] and models[0]["resolution"] == 32 and models[0]["backend"] == "eager"
    r = client.get("/v1/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    spec = client.get("/openapi.json").json()
    for path in ("/v1/models", "/v1/generate", "/v1/batches", "/v1/batches/{batch_id}/download", "/v1/jobs/{job_id}",
                 "/v1/scores", "/v1/scores/{job_id}", "/v1/healthz", "/v1/readyz"):
        assert path in spec["paths"], path
    assert client.get("/v1/healthz").json() == {"status": "ok"}
    ready = client.get("/v1/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_inline_png_is_deterministic_and_marked(env):
    client, _, gen, _ = env
    body = {"condition": {"cardiomegaly": "present", "pleural_effusion": "absent"}, "count": 1, "seed": 11}
    r1, r2 = client.post("/v1/generate", json=body), client.post("/v1/generate", json=body)
    assert r1.status_code == 200 and r1.headers["content-type"] == "image/png"
    img1, meta = decode_png(r1.content)
    img2, _ = decode_png(r2.content)
    np.testing.assert_array_equal(img1, img2)
    prov = meta["provenance"]
    assert prov.synthetic and prov.seed == 11 and prov.model_id == "tiny"
    assert prov.condition == Condition(enlarged_cardiac_silhouette="present", pleural_effusion="absent")
    direct = gen.generate([prov.condition], [11])[0]
    np.testing.assert_allclose(img1, np.round(direct * 255) / 255, atol=1 / 255 + 1e-6)
    assert r1.headers["x-synthrad-seeds"] == "11"


def test_a_family_name_is_the_model_the_cli_would_pick(env):
    client, *_ = env
    r = client.post("/v1/generate", json={"model": "tiny-test", "count": 1, "seed": 1})  # TinyGenerator's family
    assert r.status_code == 200 and r.headers["x-synthrad-model"] == "tiny"
    r = client.post("/v1/generate", json={"model": "nope", "count": 1})
    assert r.status_code == 422 and "or a family: tiny-test" in r.json()["detail"]


def test_inline_npz_and_zip_and_batch_independence(env):
    client, *_ = env
    r = client.post("/v1/generate", json={"count": 4, "seed": 100, "format": "npz", "prompt": "bibasilar atelectasis"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npz"
    z = np.load(io.BytesIO(r.content))
    assert z["images"].shape == (4, 32, 32) and z["images"].dtype == np.float32
    assert z["seeds"].tolist() == [100, 101, 102, 103]
    assert z["condition_codes"][0].tolist() == Condition(atelectasis="present").codes()
    # image i depends only on its own seed: the third image alone equals the third of four
    alone = np.load(io.BytesIO(client.post("/v1/generate", json={
        "count": 1, "seed": 102, "format": "npz", "prompt": "bibasilar atelectasis"}).content))["images"][0]
    np.testing.assert_array_equal(alone, z["images"][2])
    r = client.post("/v1/generate", json={"count": 3, "seed": 5})
    assert r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert zf.namelist() == ["0000-s5.png", "0001-s6.png", "0002-s7.png"]


@pytest.mark.parametrize("body, status, needle", [
    ({"model": "no-such-model"}, 422, "no-such-model"),
    ({"condition": {"pneumothorax": "present"}}, 422, "pneumothorax"),
    ({"condition": {"atelectasis": "maybe"}}, 422, "maybe"),
    ({"count": 17}, 422, "17"),
    ({"count": 0}, 422, "count"),
    ({"prompt": "pleural effusion", "condition": {"atelectasis": "present"}}, 422, "not both"),
    ({"prompt": "the quick brown fox"}, 422, "understood"),
    ({"seed": -1}, 422, "seed"),
    ({"params": {"steps": 5000}}, 422, "steps"),
    ({"format": "gif"}, 422, "format"),
    ({"unexpected": 1}, 422, "unexpected"),
])
def test_inline_errors_name_the_problem(env, body, status, needle):
    client, *_ = env
    r = client.post("/v1/generate", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"], r.json()


def test_batch_job_stored_pollable_downloadable(env):
    client, store, _, _ = env
    r = client.post("/v1/batches", json={"prompt": "Large right pleural effusion. No cardiomegaly.", "count": 37,
                                          "seed": 7, "format": "png"})
    assert r.status_code == 202 and r.headers["location"].startswith("/v1/jobs/job-")
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "succeeded" and job["done"] == job["total"] == 37 and job["progress"] == 1.0
    bid = job["batch_id"]
    man = client.get(f"/v1/batches/{bid}").json()
    assert man["count"] == 37 and [im["seed"] for im in man["images"]] == list(range(7, 44))
    assert man["images"][0]["condition"]["pleural_effusion"] == "present"
    assert man["images"][0]["prompt"].startswith("Large right")
    assert [b["batch_id"] for b in client.get("/v1/batches").json()] == [bid]
    img = client.get(f"/v1/batches/{bid}/images/36")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert decode_png(img.content)[1]["provenance"].seed == 43
    tar_bytes = client.get(f"/v1/batches/{bid}/download").content
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = tar.getnames()
        assert len(names) == 38 and f"{bid}/manifest.json" in names
        first = tar.extractfile(f"{bid}/{man['images'][0]['file']}").read()
    assert first == store.read_file(bid, man["images"][0]["file"])
    with zipfile.ZipFile(io.BytesIO(client.get(f"/v1/batches/{bid}/download?archive=zip").content)) as zf:
        assert len(zf.namelist()) == 38 and zf.testzip() is None
    assert client.get(f"/v1/batches/{bid}/files/manifest.json").json()["batch_id"] == bid
    assert client.delete(f"/v1/batches/{bid}").json() == {"batch_id": bid, "deleted": True}
    assert client.get(f"/v1/batches/{bid}").status_code == 404
    assert store.list() == []


@pytest.mark.parametrize("fmt, ext", [("dicom", ".dcm"), ("npz", ".npz"), ("webdataset", ".tar"), ("png16", ".png")])
def test_batch_formats(env, fmt, ext):
    client, store, _, _ = env
    job = wait_job(client, client.post("/v1/batches", json={"count": 3, "seed": 1, "format": fmt}).json()["job_id"])
    assert job["state"] == "succeeded", job
    man = store.get(job["batch_id"])
    assert man.format == fmt and man.images[0].file.endswith(ext)
    assert len(list(store.iter_images(job["batch_id"]))) == 3


def test_failing_job_is_reported_and_never_half_stored(tmp_path):
    gen = TinyGenerator("tiny", fail_seeds={45})
    platform, store, _ = make_platform(tmp_path, gen=gen)
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        r = client.post("/v1/batches", json={"count": 60, "seed": 0})
        job = wait_job(client, r.json()["job_id"])
        assert job["state"] == "failed" and "injected failure at seed 45" in job["error"]
        assert job["batch_id"] is None and job["done"] < 60
        assert store.list() == [] and client.get("/v1/batches").json() == []
        leftovers = [p.name for p in Path(store.root).iterdir()]
        assert leftovers == [], leftovers  # the temp folder was removed too
        # a later good job still works
        ok = wait_job(client, client.post("/v1/batches", json={"count": 5, "seed": 100}).json()["job_id"])
        assert ok["state"] == "succeeded"


def test_ids_are_validated_no_traversal(env):
    client, *_ = env
    for path in ("/v1/batches/not-a-batch", "/v1/batches/..%2F..%2Fetc", "/v1/batches/20261127t015959-zzzzzzzzzzzz",
                 "/v1/batches/..", "/v1/jobs/../../etc/passwd", "/v1/jobs/job-xyz"):
        r = client.get(path)
        assert 400 <= r.status_code < 500, (path, r.status_code)
    r = client.get("/v1/batches/not-a-batch")
    assert r.status_code == 400 and "invalid batch id" in r.json()["detail"]
    assert client.get("/v1/jobs/job-xyz").status_code == 400
    assert client.get("/v1/batches/20261127t015959-0123456789ab").status_code == 404
    job = wait_job(client, client.post("/v1/batches", json={"count": 1}).json()["job_id"])
    bid = job["batch_id"]
    for name in ("..%2Fmanifest.json", ".hidden", "nope.png"):
        assert 400 <= client.get(f"/v1/batches/{bid}/files/{name}").status_code < 500
    assert client.get(f"/v1/batches/{bid}/images/5").status_code == 404


def test_body_size_limit(tmp_path):
    platform, *_ = make_platform(tmp_path, limits={"max_request_bytes": 2048})
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        r = client.post("/v1/generate", json={"prompt": "x" * 1900, "count": 1, "seed": 3, "model": "y" * 300})
        assert r.status_code == 413 and "2048" in r.json()["detail"]
        def chunked():  # no Content-Length: the limit must hold while the body streams in
            yield b"{"
            for _ in range(10):
                yield b" " * 500
            yield b"}"

        r = client.post("/v1/generate", content=chunked(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_api_keys(tmp_path):
    platform, *_ = make_platform(tmp_path, api_keys=["s3cret"])
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/v1/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_concurrent_job_limit(tmp_path):
    platform, *_ = make_platform(tmp_path, limits={"max_concurrent_jobs": 1, "max_batch_images": 100})
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        first = client.post("/v1/batches", json={"count": 100})
        second = client.post("/v1/batches", json={"count": 1})
        assert first.status_code == 202
        assert second.status_code == 429 and "limit 1" in second.json()["detail"]
        assert client.post("/v1/batches", json={"count": 101}).status_code == 422
        wait_job(client, first.json()["job_id"])


def test_scoring_job(env):
    client, *_ = env
    bid = wait_job(client, client.post("/v1/batches", json={"count": 6}).json()["job_id"])["batch_id"]
    assert client.get("/v1/references").json() == ["fake-ref"]
    r = client.post("/v1/scores", json={"batch_id": bid, "reference": "fake-ref", "metrics": ["fid", "kid"]})
    assert r.status_code == 202
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    res = client.get(f"/v1/scores/{job['job_id']}").json()
    assert res["batch_id"] == bid and res["result"]["n_synthetic"] == 6
    assert res["result"]["extractor"]["name"] == "inception"
    bad = client.post("/v1/scores", json={"batch_id": bid, "reference": "imagenet"})
    assert bad.status_code == 422 and "imagenet" in bad.json()["detail"]
    assert client.post("/v1/scores", json={"batch_id": "20261127t015959-0123456789ab"}).status_code == 404
    assert client.get("/v1/jobs?kind=score").json()[0]["kind"] == "score"


def test_failed_scoring_job_is_read_as_a_failed_result(env):
    """Same as gRPC GetScore: a finished-but-failed job is a 200 with state failed and the error; 409 only while
    the job is queued or running."""
    client, _, _, platform = env
    bid = wait_job(client, client.post("/v1/batches", json={"count": 2}).json()["job_id"])["batch_id"]

    async def broken(*args):
        raise ValueError("the reference features are unreadable")

    platform.scorer.score = broken
    job = wait_job(client, client.post("/v1/scores", json={"batch_id": bid, "reference": "fake-ref"}).json()["job_id"])
    r = client.get(f"/v1/scores/{job['job_id']}")
    assert r.status_code == 200
    res = r.json()
    assert res["state"] == "failed" and "ValueError" in res["error"] and res["result"] is None

def test_metrics_after_requests(env):
    client, *_ = env
    client.post("/v1/generate", json={"condition": {"no_finding": True}, "count": 2})
    client.post("/v1/generate", json={"condition": {"atelectasis": "present", "lung_opacity": "present"}, "count": 1})
    wait_job(client, client.post("/v1/batches", json={"count": 3}).json()["job_id"])
    text = client.get("/metrics").text
    assert 'synthrad_images_generated_total{backend="eager",finding="no_finding",model="tiny"}' in text
    assert 'finding="atelectasis+lung_opacity"' in text
    for name in ("synthrad_generation_latency_seconds_bucket", "synthrad_generation_batch_size_bucket",
                 "synthrad_generation_queue_depth", "synthrad_generation_compute_seconds_count",
                 'synthrad_jobs{kind="batch",state="succeeded"}', "synthrad_jobs_finished_total",
                 "synthrad_requests_total"):
        assert name in text, name


def test_params_the_model_does_not_use_are_refused_and_defaults_recorded(tmp_path):
    platform, store, gen = make_platform(tmp_path, gen=GanLikeGenerator("gan"))
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        r = client.post("/v1/generate", json={"params": {"sampler": "ddim"}})
        assert r.status_code == 422 and "sampler" in r.json()["detail"] and "gan" in r.json()["detail"], r.text
        r = client.post("/v1/batches", json={"count": 3, "params": {"steps": 10, "truncation": 0.5}})
        assert r.status_code == 422 and "steps" in r.json()["detail"], r.text
        assert gen.calls == [] and client.get("/v1/jobs").json() == []  # refused before anything was queued

        r = client.post("/v1/generate", json={"params": {"truncation": 0.5}})
        assert r.status_code == 200, r.text
        jobs = [client.post("/v1/batches", json=body).json()["job_id"]
                for body in ({"count": 2, "seed": 3}, {"count": 2, "seed": 3, "params": {"truncation": 0.5}})]
        mans = []
        for jid in jobs:
            job = wait_job(client, jid)
            assert job["state"] == "succeeded", job
            mans.append(client.get(f"/v1/batches/{job['batch_id']}").json())
        assert client.get(f"/v1/jobs/{jobs[0]}").json()["request"]["params"] == {}  # the request as sent
        assert mans[0]["params"] == {"truncation": 0.7}  # the model's default, as applied
        assert mans[1]["params"] == {"truncation": 0.5}
        assert store.get(mans[0]["batch_id"]).params == {"truncation": 0.7}
