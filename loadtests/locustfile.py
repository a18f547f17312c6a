"""Load test of the synthrad REST API (locust; a dev dependency).

    synthrad serve &                                            # or any deployed gateway
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 32 -r 8 -t 2m

Traffic mix: mostly small inline generations over the four findings (what dynamic batching is for), some
stored batch jobs polled to completion, model listing and metric scrapes. Set SYNTHRAD_API_KEY when the
server requires keys, SYNTHRAD_LOADTEST_MODEL to pick a model, SYNTHRAD_LOADTEST_BATCH to size batch jobs.
Watch synthrad_generation_batch_size and synthrad_generation_queue_depth on /metrics while it runs.
"""

from __future__ import annotations

import os
import random
import time

from locust import HttpUser, between, task

FINDINGS = ("atelectasis", "lung_opacity", "pleural_effusion", "enlarged_cardiac_silhouette")
MODEL = os.environ.get("SYNTHRAD_LOADTEST_MODEL") or None
BATCH = int(os.environ.get("SYNTHRAD_LOADTEST_BATCH", "64"))


class SynthradUser(HttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        key = os.environ.get("SYNTHRAD_API_KEY")
        if key:
            self.client.headers["X-API-Key"] = key

    def _body(self, count: int) -> dict:
        body = {"count": count, "seed": random.randrange(2**31),
                "condition": {random.choice(FINDINGS): "present"}}
        if MODEL:
            body["model"] = MODEL
        return body

    @task(20)
    def generate_one(self) -> None:
        self.client.post("/v1/generate", json={**self._body(1), "format": "png"}, name="POST /v1/generate [1]")

    @task(5)
    def generate_few(self) -> None:
        self.client.post("/v1/generate", json={**self._body(4), "format": "npz"}, name="POST /v1/generate [4]")

    @task(2)
    def list_models(self) -> None:
        self.client.get("/v1/models")

    @task(1)
    def scrape(self) -> None:
        self.client.get("/metrics")

    @task(1)
    def batch_job(self) -> None:
        with self.client.post("/v1/batches", json={**self._body(BATCH), "format": "png"}, name="POST /v1/batches",
                              catch_response=True) as r:
            if r.status_code == 429:  # the concurrent-job limit is doing its job
                r.success()
                return
            if r.status_code != 202:
                r.failure(f"{r.status_code} {r.text[:200]}")
                return
            job_id = r.json()["job_id"]
        deadline = time.time() + 300
        while time.time() < deadline:
            j = self.client.get(f"/v1/jobs/{job_id}", name="GET /v1/jobs/{id}").json()
            if j["state"] == "succeeded":
                self.client.delete(f"/v1/batches/{j['batch_id']}", name="DELETE /v1/batches/{id}")
                return
            if j["state"] == "failed":
                return
            time.sleep(0.5)
