"""The Python client against the in-process gateway (its httpx client is FastAPI's TestClient)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from serving_fakes import TinyGenerator, make_platform
from services.common.codecs.webdataset import iter_shard
from services.common.findings import Condition
from services.gateway.rest import create_app
from synthrad.client import JobFailed, SynthradClient, SynthradError


@pytest.fixture
def client(tmp_path):
    platform, store, gen = make_platform(tmp_path)
    with TestClient(create_app(platform), base_url="http://localhost") as http:
        yield SynthradClient(http=http), gen


@pytest.mark.parametrize("fmt", ["png", "webdataset", "dicom"])
def test_batch_roundtrip_as_tensors(client, fmt):
    c, gen = client
    man = c.create_batch(condition={"pleural_effusion": "present"}, count=20, seed=3, format=fmt, progress=False)
    assert man["count"] == 20
    got = list(c.iter_images(man))
    assert [rec["seed"] for _, rec in got] == list(range(3, 23))
    img, rec = got[5]
    assert isinstance(img, torch.Tensor) and img.shape == (1, 32, 32) and img.dtype == torch.float32
    direct = gen.generate([Condition(pleural_effusion="present")], [8])[0]
    tol = 1 / 255 + 1e-6 if fmt != "dicom" else 1 / 4095 + 1e-6
    np.testing.assert_allclose(img[0].numpy(), direct, atol=tol)
    imgs, codes = next(iter(torch.utils.data.DataLoader(c.torch_dataset(man), batch_size=4)))
    assert imgs.shape == (4, 1, 32, 32) and codes[0].tolist() == Condition(pleural_effusion="present").codes()


def test_write_webdataset_and_download(client, tmp_path):
    c, _ = client
    man = c.create_batch(prompt="Cardiomegaly. No pleural effusion.", count=12, seed=1, progress=True)
    shards = c.write_webdataset(man, tmp_path / "wds" / "shard-%06d.tar", max_count=5)
    assert len(shards) == 3
    samples = [s for sh in shards for s in iter_shard(sh)]
    assert len(samples) == 12
    key, img, meta = samples[0]
    assert key.endswith("_000000") and img.shape == (32, 32)
    assert meta["seed"] == 1 and meta["codes"] == Condition(enlarged_cardiac_silhouette="present", pleural_effusion="absent").codes()
    assert meta["provenance"]["synthetic"] is True
    path = c.download(man, tmp_path / "dl")
    assert path.exists() and path.stat().st_size > 12 * 100
    assert c.generate(condition={"atelectasis": "present"}, count=2, seed=5).shape == (2, 32, 32)


def test_errors_and_failed_jobs(tmp_path):
    platform, *_ = make_platform(tmp_path, gen=TinyGenerator("tiny", fail_seeds={4}))
    with TestClient(create_app(platform), base_url="http://localhost") as http:
        c = SynthradClient(http=http)
        with pytest.raises(JobFailed, match="seed 4"):
            c.create_batch(count=10, progress=False)
        with pytest.raises(SynthradError) as ei:
            c.request_batch(model="nope")
        assert ei.value.status == 422 and "nope" in str(ei.value)
        assert c.ready()
        res = c.score(c.create_batch(count=2, seed=100, progress=False), reference="fake-ref")
        assert res["scores"][0]["name"] == "mean_intensity"


def test_a_failed_score_raises_job_failed(tmp_path):
    platform, *_ = make_platform(tmp_path)

    async def broken(*args):
        raise ValueError("the reference features are unreadable")

    platform.scorer.score = broken
    with TestClient(create_app(platform), base_url="http://localhost") as http:
        c = SynthradClient(http=http)
        batch = c.create_batch(count=2, progress=False)
        with pytest.raises(JobFailed, match="ValueError") as ei:
            c.score(batch, reference="fake-ref")
        assert ei.value.job["kind"] == "score" and ei.value.job["state"] == "failed"
        job = c.score(batch, reference="fake-ref", wait=False)  # not waiting: the job, to poll
        with pytest.raises(JobFailed, match="scoring job"):
            c.score_result(job)
