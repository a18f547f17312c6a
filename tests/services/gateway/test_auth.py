"""API keys with scopes, per-key visibility, rate limits, image quotas, lockout, audit log and the Host check.

REST through the in-process app (the same Platform the Serve app runs), gRPC on a real grpc.aio server."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from fastapi.testclient import TestClient

from serving_fakes import GrpcEnv, make_platform, wait_job
from services.common.config import ApiKeySpec, SecuritySettings, Settings
from services.gateway.auth import ApiKeyAuth, grpc_headers, host_of
from services.gateway.quotas import AuthFailureGuard, KeyLimiter
from services.gateway.rest import create_app

KEYS = [
    {"id": "pipe-a", "key": "secret-aaaa", "scopes": ["read", "generate"]},
    {"id": "pipe-b", "key": "secret-bbbb", "scopes": ["read", "generate", "delete"]},
    {"id": "scorer", "key": "secret-ssss", "scopes": ["read", "score"]},
    {"id": "ops", "key": "secret-admin", "scopes": ["admin"]},
    {"id": "slow", "key": "secret-slow1", "scopes": ["read"], "requests_per_minute": 3},
    {"id": "quota", "key": "secret-quota", "scopes": ["read", "generate"], "images_per_day": 10},
]
A, B, S, ADMIN = ({"X-API-Key": k} for k in ("secret-aaaa", "secret-bbbb", "secret-ssss", "secret-admin"))


@pytest.fixture
def keyed(tmp_path):
    platform, store, _ = make_platform(tmp_path, api_keys=KEYS)
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        yield client, store, platform


def test_scopes_are_enforced_per_operation(keyed):
    client, *_ = keyed
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers=S).status_code == 200
    r = client.post("/v1/generate", json={"count": 1}, headers=S)
    assert r.status_code == 403 and r.json()["error"] == "forbidden" and "generate" in r.json()["detail"]
    assert client.post("/v1/generate", json={"count": 1}, headers=A).status_code == 200
    job = wait_job(client, client.post("/v1/batches", json={"count": 3}, headers=A).json()["job_id"], headers=A)
    r = client.delete(f"/v1/batches/{job['batch_id']}", headers=A)  # A has no delete scope
    assert r.status_code == 403 and "delete" in r.json()["detail"]
    r = client.post("/v1/scores", json={"batch_id": job["batch_id"], "reference": "fake-ref"}, headers=A)
    assert r.status_code == 403
    assert client.get("/metrics").status_code == 200  # scrapers need no key
    assert client.get("/metrics?ray=1", headers=A).status_code == 403  # Ray's own series: admin only
    for spelling in ("y", "t", "True", "on", "1"):
        assert client.get(f"/metrics?ray={spelling}").status_code == 401, spelling
    assert client.get("/metrics?ray=0").status_code == 200
    assert client.get("/metrics?ray=1", headers=ADMIN).status_code == 200


def test_keys_see_only_their_own_batches_and_jobs(keyed):
    client, store, _ = keyed
    ja = wait_job(client, client.post("/v1/batches", json={"count": 2, "prompt": "Left pleural effusion."},
                                      headers=A).json()["job_id"], headers=A)
    jb = wait_job(client, client.post("/v1/batches", json={"count": 2}, headers=B).json()["job_id"], headers=B)
    assert ja["state"] == jb["state"] == "succeeded"
    # the key id (never the key) is recorded on the job and in the manifest
    assert store.get(ja["batch_id"]).created_by == "pipe-a"
    assert "secret" not in json.dumps(client.get(f"/v1/jobs/{ja['job_id']}", headers=A).json())
    assert [b["batch_id"] for b in client.get("/v1/batches", headers=A).json()] == [ja["batch_id"]]
    assert [j["job_id"] for j in client.get("/v1/jobs", headers=B).json()] == [jb["job_id"]]
    # B can neither read A's job (with its prompt) nor its batch, nor delete it: all "not found"
    assert client.get(f"/v1/jobs/{ja['job_id']}", headers=B).status_code == 404
    for path in (f"/v1/batches/{ja['batch_id']}", f"/v1/batches/{ja['batch_id']}/images/0",
                 f"/v1/batches/{ja['batch_id']}/download", f"/v1/batches/{ja['batch_id']}/files/manifest.json"):
        assert client.get(path, headers=B).status_code == 404, path
    assert client.delete(f"/v1/batches/{ja['batch_id']}", headers=B).status_code == 404
    assert store.exists(ja["batch_id"])
    # the scorer key cannot score a batch it does not see; admin sees everything
    r = client.post("/v1/scores", json={"batch_id": ja["batch_id"], "reference": "fake-ref"}, headers=S)
    assert r.status_code == 404
    assert {b["batch_id"] for b in client.get("/v1/batches", headers=ADMIN).json()} == {ja["batch_id"], jb["batch_id"]}
    assert client.delete(f"/v1/batches/{jb['batch_id']}", headers=B).status_code == 200


def test_rate_limit_and_image_quota_give_429_with_retry_after(keyed):
    client, *_ = keyed
    slow = {"X-API-Key": "secret-slow1"}
    codes = [client.get("/v1/models", headers=slow).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = client.get("/v1/models", headers=slow)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and r.json()["error"] == "rate_limited"
    q = {"X-API-Key": "secret-quota"}
    assert client.post("/v1/generate", json={"count": 8}, headers=q).status_code == 200
    r = client.post("/v1/batches", json={"count": 5}, headers=q)
    assert r.status_code == 429 and "quota of 10 images" in r.json()["detail"]
    assert 1 <= int(r.headers["Retry-After"]) <= 86_400
    r = client.post("/v1/batches", json={"count": 11}, headers=q)  # more than the quota ever allows
    assert r.status_code == 422 and "quota" in r.json()["detail"]
    assert client.post("/v1/generate", json={"count": 2}, headers=q).status_code == 200  # 8 + 2 = 10


def test_failed_authentication_locks_the_client_out(tmp_path):
    platform, *_ = make_platform(tmp_path, api_keys=KEYS, security={"auth_failures_per_minute": 5, "lockout_s": 30})
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        codes = [client.get("/v1/models", headers={"X-API-Key": f"guess-{i}"}).status_code for i in range(8)]
        assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3
        r = client.get("/v1/models")  # no key at all: locked out too
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        # a valid key from the same address still works: clients behind one NAT cannot lock each other out
        assert client.get("/v1/models", headers=A).status_code == 200


def test_refused_calls_count_against_the_rate_and_are_audited_sampled(tmp_path):
    keys = [{"id": "ro", "key": "secret-ro-ro", "scopes": ["read"], "requests_per_minute": 3}]
    platform, *_ = make_platform(tmp_path, api_keys=keys)
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        codes = [client.post("/v1/generate", json={"count": 1}, headers={"X-API-Key": "secret-ro-ro"}).status_code
                 for _ in range(10)]
    assert codes == [403] * 3 + [429] * 7
    denied = [e for e in platform.audit.read() if e["action"] == "auth.denied"]
    assert len(denied) == 1 and denied[0]["key_id"] == "ro" and denied[0]["operation"] == "Generate"


def test_failure_log_is_sampled_not_flooded(caplog):
    guard = AuthFailureGuard(SecuritySettings(auth_failures_per_minute=1000), clock=lambda: 100.0)
    with caplog.at_level("WARNING"):
        for _ in range(500):
            guard.failed("203.0.113.9", "invalid key")
    assert len([r for r in caplog.records if "authentication failed" in r.getMessage()]) == 1


def test_token_buckets_refill():
    now = [0.0]
    lim = KeyLimiter([ApiKeySpec(id="k", key="12345678", requests_per_minute=2, images_per_day=100)],
                     clock=lambda: now[0])
    lim.request("k"), lim.request("k")
    with pytest.raises(Exception) as e:
        lim.request("k")
    assert 29 <= e.value.retry_after_s <= 31
    now[0] += 30.0
    lim.request("k")  # one token back after 30 s
    lim.images("k", 100)
    with pytest.raises(Exception):
        lim.images("k", 1)
    lim.refund("k", 5)
    lim.images("k", 5)


def test_audit_log_records_who_did_what(keyed):
    client, store, platform = keyed
    client.post("/v1/generate", json={"count": 2}, headers=A)
    job = wait_job(client, client.post("/v1/batches", json={"count": 3}, headers=B).json()["job_id"], headers=B)
    client.delete(f"/v1/batches/{job['batch_id']}", headers=B)
    entries = platform.audit.read()
    got = [(e["action"], e["key_id"]) for e in entries]
    assert ("generate", "pipe-a") in got and ("batch.create", "pipe-b") in got
    assert ("batch.stored", "pipe-b") in got and ("batch.delete", "pipe-b") in got
    stored = next(e for e in entries if e["action"] == "batch.stored")
    assert stored["batch_id"] == job["batch_id"] and stored["count"] == 3 and stored["job_id"] == job["job_id"]
    text = platform.settings.resolved_audit_log.read_text()
    assert "secret-" not in text  # ids, never keys


def test_host_header_is_checked_while_auth_is_off(tmp_path):
    platform, *_ = make_platform(tmp_path)
    with TestClient(create_app(platform), base_url="http://localhost:8000") as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get("/v1/models", headers={"Host": "127.0.0.1:8000"}).status_code == 200
        assert client.get("/v1/models", headers={"Host": "[::1]:8000"}).status_code == 200
        r = client.get("/v1/models", headers={"Host": "attacker.example:8000"})
        assert r.status_code == 400 and "Host header" in r.json()["detail"]
        for rebinding in ("127.0.0.1.attacker.example:8000", "127.attacker.example", "localhost.attacker.example"):
            assert client.get("/v1/models", headers={"Host": rebinding}).status_code == 400, rebinding
        assert client.get("/v1/models", headers={"Host": "127.0.0.2"}).status_code == 200  # loopback IP literal
    platform, *_ = make_platform(tmp_path / "b", security={"allowed_hosts": ["xray.lab.internal"]})
    with TestClient(create_app(platform), base_url="http://xray.lab.internal") as client:
        assert client.get("/v1/models").status_code == 200
    assert host_of("[::1]:80") == "::1" and host_of("Example.org:1") == "example.org" and host_of("::1") == "::1"


def test_bare_string_keys_are_scoped_to_their_own_objects():
    spec = Settings(api_keys=["legacy-key-1"]).api_keys[0]
    assert spec.id.startswith("key-") and "admin" not in spec.scopes and spec.key is None
    auth = ApiKeyAuth(Settings(api_keys=["legacy-key-1"]).api_keys)
    caller = auth.authenticate({"x-api-key": "legacy-key-1"})
    assert caller.key_id == spec.id and not caller.may_see("someone-else") and caller.may_see(spec.id)
    with pytest.raises(ValueError):
        Settings(api_keys=[{"id": "x", "key": "short"}])  # too short a secret
    with pytest.raises(ValueError):
        Settings(api_keys=[{"id": "x", "key": "longenough1"}, {"id": "x", "key": "longenough2"}])


def test_grpc_metadata_that_is_not_text_is_refused_not_a_crash():
    assert grpc_headers([("x-api-key", b"\xff\xfe"), ("token-bin", b"\x00\x01"), ("X-Other", "v")]) == {"x-other": "v"}


def test_grpc_scopes_visibility_and_bad_metadata(tmp_path):
    from services.gateway.stubs import batch_pb2, common_pb2, generator_pb2, metrics_pb2

    async def go():
        async with GrpcEnv(tmp_path, api_keys=KEYS) as env:
            g, b, sc, store = env.gen_stub, env.batch_stub, env.metrics_stub, env.store
            md = lambda k: (("x-api-key", k),)  # noqa: E731
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await g.ListModels(generator_pb2.ListModelsRequest(), metadata=(("x-api-key-bin", b"\xff\x00"),))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await g.Generate(generator_pb2.GenerateRequest(count=1), metadata=md("secret-ssss"))
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "generate" in e.value.details()
            job = await b.CreateBatch(batch_pb2.CreateBatchRequest(count=2), metadata=md("secret-aaaa"))
            for _ in range(200):
                job = await b.GetJob(common_pb2.GetJobRequest(job_id=job.job_id), metadata=md("secret-aaaa"))
                if job.batch_id:
                    break
                await asyncio.sleep(0.05)
            assert job.batch_id and store.get(job.batch_id).created_by == "pipe-a"
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await b.GetBatch(batch_pb2.GetBatchRequest(batch_id=job.batch_id), metadata=md("secret-bbbb"))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            listed = await b.ListBatches(batch_pb2.ListBatchesRequest(), metadata=md("secret-bbbb"))
            assert list(listed.batches) == []
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await sc.CreateScore(metrics_pb2.CreateScoreRequest(batch_id=job.batch_id), metadata=md("secret-aaaa"))
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED

    asyncio.run(go())
