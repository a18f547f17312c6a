"""The batch store on a real S3 API (moto's server): write, read with hash checks, list, damage, resume after a
crash, delete — and a batch job through the gateway whose download streams from the bucket."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from fastapi.testclient import TestClient

from s3_server import s3_bucket
from serving_fakes import make_platform, wait_job
from services.common.findings import Condition
from services.common.store import BatchDamaged, BatchStore
from services.gateway.rest import create_app
from synthrad.client import SynthradClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket():
    with s3_bucket() as url:
        yield url


@pytest.mark.parametrize("fmt", ["png", "webdataset"])
def test_a_batch_round_trips_through_s3(bucket, fmt):
    store = BatchStore(f"{bucket}/rt-{fmt}")
    assert not store.local
    rng = np.random.default_rng(0)
    images = [rng.random((16, 16)).astype(np.float32) for _ in range(5)]
    with store.create("m", "0" * 16, "eager", fmt) as w:
        for i, img in enumerate(images):
            w.add(img, seed=i, condition=Condition(pleural_effusion="present"))
    man = store.verify(w.batch_id)
    assert man.count == 5 and [m.batch_id for m in store.list()] == [w.batch_id]
    got = [img for _, img in store.iter_images(w.batch_id)]
    assert all(np.abs(a - b).max() <= 1 / 255 + 1e-6 for a, b in zip(got, images))
    store.delete(w.batch_id)
    assert store.list() == []


def test_damage_in_the_bucket_is_detected(bucket):
    store = BatchStore(f"{bucket}/damage")
    with store.create("m", "0" * 16, "eager", "png") as w:
        for i in range(3):
            w.add(np.full((8, 8), 0.5, np.float32), seed=i, condition=Condition())
    name = store.get(w.batch_id).images[1].file
    with store.fs.open(f"{store.batch_path(w.batch_id)}/{name}", "wb") as fh:
        fh.write(b"\x89PNG damaged")
    with pytest.raises(BatchDamaged, match=name):
        store.verify(w.batch_id)


def test_an_interrupted_batch_resumes_in_the_bucket(bucket):
    store = BatchStore(f"{bucket}/resume")
    w = store.create("m", "0" * 16, "eager", "png")
    for i in range(4):
        w.add(np.full((8, 8), i / 10, np.float32), seed=i, condition=Condition())
    w.sync()
    w.suspend()  # the process dies here: nothing published
    assert store.list() == []
    again = BatchStore(f"{bucket}/resume").resume(w.batch_id)
    assert again is not None and again.count == 4
    for i in range(4, 6):
        again.add(np.full((8, 8), i / 10, np.float32), seed=i, condition=Condition())
    man = again.commit()
    assert [r.seed for r in store.verify(man.batch_id).images] == list(range(6))


def test_a_batch_job_stores_to_s3_and_downloads_as_a_stream(bucket, tmp_path):
    platform, store, _ = make_platform(tmp_path, store_url=f"{bucket}/gateway")
    assert not store.local
    with TestClient(create_app(platform), base_url="http://localhost") as http:
        job = wait_job(http, http.post("/v1/batches", json={"count": 6, "seed": 3}).json()["job_id"], timeout=60)
        assert job["state"] == "succeeded"
        with http.stream("GET", f"/v1/batches/{job['batch_id']}/download") as r:
            assert r.status_code == 200
            data = b"".join(r.iter_bytes())
        names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
        assert sum(n.endswith(".png") for n in names) == 6 and any(n.endswith("manifest.json") for n in names)
        client = SynthradClient(http=http)  # checks every file's sha256 against the manifest
        seeds = [rec["seed"] for _, rec in client.iter_images(job["batch_id"])]
    assert seeds == list(range(3, 9))
