"""Beyond capacity: an inline request whose model queue is full is shed at once (503 + Retry-After, the same
on gRPC as UNAVAILABLE), while a batch job backs off and retries until it gets capacity."""

from __future__ import annotations

from fastapi.testclient import TestClient

from generator_faults import BusyGenerators
from serving_fakes import FakeScorer, TinyGenerator, wait_job
from services.common.config import JobSettings, Settings
from services.common.store import BatchStore
from services.gateway.clients import LocalScorer
from services.gateway.core import Platform
from services.gateway.rest import create_app
from services.generator.replica import GeneratorReplica


def _platform(tmp_path, busy: int):
    settings = Settings(home=tmp_path / "home", jobs=JobSettings(retry_backoff_s=0.01))
    store = BatchStore(settings.resolved_store_url)
    gen = TinyGenerator("tiny")
    gens = BusyGenerators({"tiny": GeneratorReplica("tiny", generator=gen)}, busy=busy)
    platform = Platform(gens, LocalScorer(FakeScorer(store)), store, settings, jobs_dir=settings.home / "jobs",
                        default_model="tiny")
    return platform, gens


def test_an_inline_request_is_shed_at_once_with_retry_after(tmp_path):
    platform, gens = _platform(tmp_path, busy=1)
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        r = client.post("/v1/generate", json={"count": 2})
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json()["error"] == "unavailable" and "at capacity" in r.json()["detail"]
        assert gens.calls == 1  # not retried into a timeout
        assert client.post("/v1/generate", json={"count": 2}).status_code == 200  # capacity again


def test_a_batch_job_waits_for_capacity_instead(tmp_path):
    platform, gens = _platform(tmp_path, busy=3)
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        job = wait_job(client, client.post("/v1/batches", json={"count": 4}).json()["job_id"], timeout=60)
    assert job["state"] == "succeeded" and gens.calls >= 4


def test_grpc_says_unavailable():
    from services.gateway.errors import api_error, grpc_status
    from services.generator.generation.service import GenerationOverloaded

    code, details = grpc_status(api_error(GenerationOverloaded("model tiny is at capacity")))
    assert code.name == "UNAVAILABLE" and "at capacity" in details
