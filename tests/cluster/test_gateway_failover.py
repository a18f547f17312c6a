"""Stateless gateways and durable jobs on the real Ray Serve platform (slow).

The platform runs with two gateway replicas, the jobs deployment and two generator replicas (a generator whose
forward pass takes 0.25 s, so a 640-image job lasts seconds). Mid-job:

* one gateway replica is killed: the job never notices (same attempt), every poll is answered by the gateway
  that is left or the one Serve starts in its place, and the job's chunks were made by both generator
  replicas (a large job fans out);
* the jobs replica is killed: Serve starts a new one, which finds the job's runner dead and resumes it from
  the images already stored (attempt 2); one batch, every seed once, every hash checked, and the pixels are
  the ones those seeds make;
* ``/metrics`` shows the same application-wide series whichever gateway replica answers (the telemetry
  deployment holds them): both jobs finished, every image counted.
"""

from __future__ import annotations

import io
import os
import sys
import time

import httpx
import numpy as np
import pytest

from repo_paths import SUPPORT

pytestmark = pytest.mark.slow
MODEL, N = "slow", 640


def _get(client: httpx.Client, path: str, failures: list[str]) -> dict:
    """GET that rides out a replica being replaced (each failed try is noted)."""
    for _ in range(200):
        try:
            r = client.get(path)
        except httpx.HTTPError as e:
            failures.append(type(e).__name__)
        else:
            if r.status_code == 200:
                return r.json()
            failures.append(str(r.status_code))
        time.sleep(0.1)
    raise AssertionError(f"{path} never answered: {failures[-5:]}")


def _wait(client, job_id, failures, done_at_least=None, timeout=300.0) -> dict:
    deadline = time.time() + timeout
    j: dict = {}
    while time.time() < deadline:
        j = _get(client, f"/v1/jobs/{job_id}", failures)
        if j["state"] in ("succeeded", "failed") or (done_at_least is not None and j["done"] >= done_at_least):
            return j
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: {j}")


def _sample(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name and smp.labels == labels:
                return smp.value
    raise AssertionError(f"no sample {name}{labels}")


def _kill_one(kind: str) -> str:
    import ray

    actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if f"#{kind}#" in a["name"]]
    assert actors, kind
    a = sorted(actors, key=lambda a: a["name"])[0]
    ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=False)
    return a["name"]


def _running_replicas(deployment: str) -> int:
    from ray import serve

    status = serve.status().applications["synthrad"].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def test_losing_a_gateway_or_the_jobs_replica_loses_nothing(tmp_path, _isolated_home):
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), *[p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p]])
    if str(SUPPORT) not in sys.path:
        sys.path.insert(0, str(SUPPORT))
    from services.common.codecs.png import decode_png
    from services.common.config import Settings
    from services.common.store import BatchStore
    from services.gateway.app import start_local

    settings = Settings(home=tmp_path / "home", serve={
        "gateway_replicas": 2, "generator_min_replicas": 2, "generator_max_replicas": 2})
    lp = start_local(settings, models=[MODEL], http_port=0, grpc_port=0, with_metrics=False,
                     generator_factory={MODEL: "serving_fakes:make_slow_tiny"}, wait_ready_s=600)
    failures: list[str] = []
    try:
        assert _running_replicas("gateway") == 2 and _running_replicas(f"generator-{MODEL}") == 2
        with httpx.Client(base_url=lp.http_url, timeout=60) as client:
            # 1. a gateway replica dies mid-job
            r = client.post("/v1/batches", json={"model": MODEL, "count": N, "seed": 3})
            assert r.status_code == 202, r.text
            first = r.json()["job_id"]
            before = _wait(client, first, failures, done_at_least=64)
            assert before["state"] == "running" and before["done"] < N, before
            _kill_one("gateway")
            job = _wait(client, first, failures)
            assert job["state"] == "succeeded" and job["attempt"] == 1, job  # the job never noticed
            assert job["replicas"] == 2, job  # its chunks were made by both generator replicas
            store = BatchStore(lp.store_url)
            man = store.verify(job["batch_id"])
            assert man.count == N and [r.seed for r in man.images] == list(range(3, 3 + N))

            # 2. the jobs replica dies mid-job: the replica Serve starts in its place resumes the job
            r = client.post("/v1/batches", json={"model": MODEL, "count": N, "seed": 1000})
            second = r.json()["job_id"]
            before = _wait(client, second, failures, done_at_least=64)
            assert before["state"] == "running" and before["done"] < N, before
            _kill_one("jobs")
            job = _wait(client, second, failures)
            assert job["state"] == "succeeded" and job["attempt"] == 2, job
            man = store.verify(job["batch_id"])  # one batch, every file's sha256 checked
            assert man.count == N and [r.seed for r in man.images] == list(range(1000, 1000 + N))
            assert [b["batch_id"] for b in _get(client, "/v1/batches", failures)].count(job["batch_id"]) == 1
            for index in (0, before["done"] - 1, before["done"], N - 1):  # before and after the kill
                r = client.post("/v1/generate", json={"model": MODEL, "count": 1, "seed": 1000 + index,
                                                      "format": "npz"})
                ref = np.load(io.BytesIO(r.content))["images"][0]
                got = decode_png(client.get(f"/v1/batches/{job['batch_id']}/images/{index}").content)[0]
                np.testing.assert_allclose(got, ref, atol=1 / 255)

            listed = {j["job_id"]: j["state"] for j in _get(client, "/v1/jobs", failures)}
            assert listed == {first: "succeeded", second: "succeeded"}

            # /metrics is the application's one set of series, whichever gateway replica answers the scrape
            scrapes = [client.get("/metrics").text for _ in range(8)]
            finished = {_sample(t, "synthrad_jobs_finished_total", kind="batch", state="succeeded") for t in scrapes}
            assert finished == {2.0}, finished
            assert {_sample(t, "synthrad_jobs", kind="batch", state="succeeded") for t in scrapes} == {2.0}
            made = [_sample(t, "synthrad_images_generated_total", model=MODEL, backend="eager",
                            finding="unspecified") for t in scrapes]
            # every image of both jobs but those whose events the killed jobs replica still held (at most its last
            # flush interval, 0.5 s: 4 passes of 16 images per generator replica here), and never going back
            assert made[0] >= 2 * N - 2 * 4 * 16 and made == sorted(made), made
        deadline = time.time() + 60
        while _running_replicas("gateway") < 2 and time.time() < deadline:  # Serve replaced the dead gateway
            time.sleep(0.5)
        assert _running_replicas("gateway") == 2
    finally:
        lp.shutdown()
    # polls that met a dying replica were retried; at most a few, never a lost or failed job
    assert len(failures) <= 20, failures
