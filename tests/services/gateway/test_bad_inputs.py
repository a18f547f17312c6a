"""Every bad REST input is a 4xx with a JSON ErrorBody naming the problem, never a 5xx (in process, no Ray).

The real FastAPI app of the gateway on the in-process Platform with tiny test generators. Each case sends what a
fuzzer or a careless client sends and checks the status, that the body is JSON with ``error`` and ``detail``, and
that ``detail`` names what is wrong. Server failures (500) are JSON too, with an error id and nothing internal.
"""

from __future__ import annotations

import logging
import pickle
import re

import pytest
from fastapi.testclient import TestClient

from serving_fakes import FakeScorer, GanLikeGenerator, TinyGenerator
from services.gateway.rest import create_app


class NativeOnly(TinyGenerator):
    """The tiny generator as it really is: it makes its native 32 px only (generate() refuses any other size)."""

    max_resize_factor = 1


class NativeOnlyGan(GanLikeGenerator):
    max_resize_factor = 1


class Odd(ValueError):
    """An exception Ray cannot rebuild: its ``__init__`` wants two arguments, its ``args`` hold one."""

    def __init__(self, a, b):
        super().__init__(a)


def _platform(tmp_path, gens, **settings_kw):
    from services.common.config import Settings
    from services.common.store import BatchStore
    from services.gateway.clients import LocalScorer
    from services.generator.generation import LocalGenerators
    from services.gateway.core import Platform
    from services.generator.replica import GeneratorReplica

    settings = Settings(home=tmp_path / "home", **settings_kw)
    store = BatchStore(settings.resolved_store_url)
    platform = Platform(LocalGenerators({g.model_id: GeneratorReplica(g.model_id, generator=g) for g in gens}),
                        LocalScorer(FakeScorer(store)), store, settings, jobs_dir=settings.home / "jobs",
                        default_model=gens[0].model_id)
    return platform, store


@pytest.fixture
def env(tmp_path):
    tiny, gan = NativeOnly("tiny"), NativeOnlyGan("gan")
    platform, store = _platform(tmp_path, [tiny, gan])
    # raise_server_exceptions=False: a 500 must come back as a response the assertions can see
    with TestClient(create_app(platform), base_url="http://localhost", raise_server_exceptions=False) as client:
        yield client, platform, store, tiny, tmp_path


def assert_error(r, status: int, *needles: str, kind: str | None = None) -> dict:
    """``r`` is ``status`` with a JSON ErrorBody whose detail contains every needle (case-insensitive)."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    if kind:
        assert body["error"] == kind, body
    for n in needles:
        assert n.lower() in body["detail"].lower(), (n, body["detail"])
    assert "Traceback" not in r.text and "File \"" not in r.text
    return body


JSON = {"content-type": "application/json"}


def post_raw(client, path: str, data: bytes, headers=JSON):
    return client.post(path, content=data, headers=headers)


# ---- JSON bodies the json module parses but no field accepts ------------------------------------------------
@pytest.mark.parametrize("raw, field", [
    (b'{"seed": NaN}', "seed"),
    (b'{"seed": Infinity}', "seed"),
    (b'{"seed": -Infinity}', "seed"),
    (b'{"seed": 1e400}', "seed"),
    (b'{"count": 1e400}', "count"),
    (b'{"count": NaN}', "count"),
    (b'{"params": {"guidance": NaN}}', "params.guidance"),
    (b'{"params": {"truncation": Infinity}}', "params.truncation"),
    (b'{"params": {"steps": 1e400}}', "params.steps"),
    (b'{"seed": 9223372036854775808}', "seed"),  # 2**63
    (b'{"seed": -1}', "seed"),
    (b'{"seed": "zero"}', "seed"),
    (b'{"count": 0}', "count"),
    (b'{"count": -5}', "count"),
    (b'{"count": 1.5}', "count"),
    (b'{"prompt": "\\ud800"}', "prompt"),  # a lone surrogate: valid JSON escape, not valid text
    (b'{"prompt": "ok \\udfff\\ud800 ok"}', "prompt"),
    (b'{"model": "\\ud83d"}', "model"),
    (b'{"format": "gif"}', "format"),
    (b'{"params": {"sampler": "euler"}}', "params.sampler"),
    (b'{"params": {"resolution": 8}}', "params.resolution"),
    (b'{"params": {"bogus": 1}}', "bogus"),
    (b'{"params": [1, 2]}', "params"),
    (b'{"colour": "blue"}', "colour"),
    (b'{"condition": "present"}', "condition"),
    (b'{"condition": {"no_finding": true, "pleural_effusion": "present"}}', "no_finding"),
    (b'{"condition": {"pneumothorax": "present"}}', "pneumothorax"),
    (b'{"condition": {"atelectasis": "maybe"}}', "maybe"),
    (b'{"condition": {"atelectasis": {"a": [[[{"b": null}]]]}}}', "atelectasis"),
    (b'{"condition": {"atelectasis": "present"}, "prompt": "effusion"}', "either"),
    (b'{"prompt": "' + b"x" * 2001 + b'"}', "prompt"),
    (b'{"model": "' + b"m" * 500 + b'"}', "model"),
])
def test_generate_refuses_bad_values_with_422_naming_the_field(env, raw, field):
    client, *_ = env
    body = assert_error(post_raw(client, "/v1/generate", raw), 422, field, kind="invalid_argument")
    assert len(body["detail"]) <= 2000
    assert body["errors"] and all(set(e) == {"loc", "msg", "type"} for e in body["errors"])


def test_huge_counts_and_seeds_are_limits_not_crashes(env):
    client, *_ = env
    assert_error(client.post("/v1/generate", json={"count": 10**30}), 422, "count", "limit")
    assert_error(client.post("/v1/batches", json={"count": 10**30}), 422, "count", "limit")
    # seed + count must stay below 2**63 (image i gets seed + i)
    assert_error(client.post("/v1/generate", json={"seed": 2**63 - 1, "count": 2}), 422, "seed")
    assert client.post("/v1/generate", json={"seed": 2**63 - 2, "count": 2}).status_code == 200


@pytest.mark.parametrize("raw, status, needle", [
    (b"\xff\xfe\x00{", 400, "utf-8"),               # not UTF-8
    (b"\xc3\x28{}", 400, "utf-8"),                 # invalid UTF-8 sequence
    (b'{"seed": 1', 400, "not valid utf-8 json"),         # truncated
    (b"{bad json}", 400, "not valid utf-8 json"),
    (b"", 422, "body is missing"),
    (b"[" * 50_000 + b"]" * 50_000, 400, "could not be read"),  # nested too deep for the JSON parser
    (b"[1, 2, 3]", 422, "json object"),
    (b'"a string"', 422, "json object"),
    (b"null", 422, "json object"),
    (b"12", 422, "json object"),
])
def test_unreadable_bodies_are_json_errors(env, raw, status, needle):
    client, *_ = env
    for path in ("/v1/generate", "/v1/batches", "/v1/scores"):
        assert_error(post_raw(client, path, raw), status, needle)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None])
def test_a_body_that_is_not_json_is_415(env, ctype):
    client, *_ = env
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/v1/generate", content=b'{"count": 1}', headers=headers)
    assert_error(r, 415, "application/json", kind="unsupported_media_type")
    # the same body as JSON is fine
    assert client.post("/v1/generate", content=b'{"count": 1}', headers=JSON).status_code == 200
    assert client.post("/v1/generate", content=b'{"count": 1}',
                       headers={"content-type": "application/json; charset=utf-8"}).status_code == 200


def test_body_size_limit_is_json(tmp_path):
    platform, _ = _platform(tmp_path, [NativeOnly("tiny")], limits={"max_request_bytes": 2048})
    with TestClient(create_app(platform), base_url="http://localhost", raise_server_exceptions=False) as client:
        assert_error(client.post("/v1/generate", json={"prompt": "x" * 3000}), 413, "2048", kind="too_large")


# ---- parameters the model cannot use, at submission ---------------------------------------------------------
def test_unused_param_is_422_naming_it(env):
    client, *_ = env
    body = assert_error(client.post("/v1/generate", json={"model": "gan", "params": {"sampler": "ddim"}}), 422,
                        "sampler", "gan", "truncation")
    assert body["error"] == "invalid_argument"


@pytest.mark.parametrize("path", ["/v1/generate", "/v1/batches"])
def test_resolution_the_model_cannot_make_is_refused_at_submission(env, path):
    client, platform, _, tiny, _ = env
    r = client.post(path, json={"count": 2, "params": {"resolution": 128}})
    assert_error(r, 422, "128", "32", "resolution")
    assert client.get("/v1/jobs").json() == [] and tiny.calls == []  # nothing queued, nothing generated
    assert client.post(path, json={"count": 2, "params": {"resolution": 32}}).status_code in (200, 202)


def test_inline_and_batch_refuse_a_resolution_with_the_same_message(env):
    client, *_ = env
    a = client.post("/v1/generate", json={"params": {"resolution": 64}}).json()["detail"]
    b = client.post("/v1/batches", json={"count": 1, "params": {"resolution": 64}}).json()["detail"]
    assert a == b and "64" in a


# ---- scoring: names checked against the metrics layer's registry, at submission ----------------------------
def _batch(client) -> str:
    import time

    job = client.post("/v1/batches", json={"count": 2}).json()
    for _ in range(200):
        j = client.get(f"/v1/jobs/{job['job_id']}").json()
        if j["state"] in ("succeeded", "failed"):
            assert j["state"] == "succeeded", j
            return j["batch_id"]
        time.sleep(0.05)
    raise AssertionError("batch job did not finish")


def test_scores_refuse_unknown_metrics_and_extractors_listing_the_valid_ones(env):
    from services.metrics.api import ALL_METRICS
    from services.metrics.extractors import available_extractors

    client, *_ = env
    bid = _batch(client)
    before = len(client.get("/v1/jobs").json())
    body = assert_error(client.post("/v1/scores", json={"batch_id": bid, "reference": "fake-ref",
                                                       "metrics": ["fid", "bogus"]}), 422, "bogus")
    assert all(m in body["detail"] for m in ALL_METRICS)
    body = assert_error(client.post("/v1/scores", json={"batch_id": bid, "reference": "fake-ref",
                                                       "extractor": "vgg"}), 422, "vgg")
    assert all(x in body["detail"] for x in available_extractors())
    assert_error(client.post("/v1/scores", json={"batch_id": bid, "reference": "fake-ref", "metrics": []}), 422,
                 "metrics")
    assert_error(client.post("/v1/scores", json={"batch_id": bid, "reference": "fake-ref", "metrics": [" "]}), 422,
                 "no metrics")
    assert_error(client.post("/v1/scores", json={"batch_id": bid, "reference": "nope"}), 422, "nope", "fake-ref")
    assert len(client.get("/v1/jobs").json()) == before  # refused before anything was queued
    # the names are checked before the batch is looked up
    assert_error(client.post("/v1/scores", json={"batch_id": "20261127t015959-0123456789ab", "metrics": ["x"]}),
                 422, "'x'")
    ok = client.post("/v1/scores", json={"batch_id": bid, "reference": "fake-ref", "metrics": ["FID", "all"]})
    assert ok.status_code == 202 and ok.json()["request"]["metrics"] == list(ALL_METRICS)


def test_scores_refuse_bad_batch_ids(env):
    client, *_ = env
    assert_error(client.post("/v1/scores", json={"batch_id": "x"}), 400, "invalid batch id", kind="bad_id")
    assert_error(client.post("/v1/scores", json={"batch_id": "../../etc"}), 400, "invalid batch id")
    assert_error(client.post("/v1/scores", json={}), 422, "batch_id")
    assert_error(client.post("/v1/scores", json={"batch_id": 7}), 422, "batch_id")


# ---- ids, routes, methods -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path, status, needle", [
    ("/v1/batches/not-a-batch", 400, "invalid batch id"),
    ("/v1/batches/20261127T015959-0123456789ab", 400, "invalid batch id"),
    ("/v1/batches/" + "2" * 5000, 400, "invalid batch id"),
    ("/v1/batches/20261127t015959-0123456789ab", 404, "not found"),
    ("/v1/batches/20261127t015959-0123456789ab/download", 404, "not found"),
    ("/v1/batches/20261127t015959-0123456789ab/download?archive=rar", 422, "archive"),
    ("/v1/batches/20261127t015959-0123456789ab/images/-1", 422, "index"),
    ("/v1/batches/20261127t015959-0123456789ab/images/99999999999999999999999", 422, "index"),
    ("/v1/batches/20261127t015959-0123456789ab/images/one", 422, "index"),
    ("/v1/batches/20261127t015959-0123456789ab/files/.hidden", 400, "file name"),
    ("/v1/batches/20261127t015959-0123456789ab/files/..%2Fmanifest.json", 404, ""),
    ("/v1/jobs/job-xyz", 400, "invalid job id"),
    ("/v1/jobs/%00", 400, "invalid job id"),
    ("/v1/jobs/job-0123456789abcdef", 404, "not found"),
    ("/v1/scores/job-XYZ", 400, "invalid job id"),
    ("/v1/jobs?kind=everything", 422, "kind"),
    ("/v1/models/nope", 404, "nope"),
    ("/v1/nowhere", 404, "no such route"),
    ("/metrics?ray=perhaps", 422, "ray"),
])
def test_bad_ids_and_routes_are_json_4xx(env, path, status, needle):
    client, *_ = env
    assert_error(client.get(path), status, needle)


def test_delete_bad_ids_and_wrong_methods(env):
    client, *_ = env
    assert_error(client.delete("/v1/batches/..%2F..%2Fetc"), 404, "")
    assert_error(client.delete("/v1/batches/bad"), 400, "invalid batch id")
    assert_error(client.delete("/v1/batches/20261127t015959-0123456789ab"), 404, "not found")
    body = assert_error(client.put("/v1/generate", json={}), 405, "PUT", "POST", kind="method_not_allowed")
    assert "allowed" in body["detail"]


def test_not_found_messages_hide_the_store_location(env):
    client, platform, store, _, tmp_path = env
    r = client.get("/v1/batches/20261127t015959-0123456789ab")
    body = assert_error(r, 404, "20261127t015959-0123456789ab")
    assert str(tmp_path) not in r.text and "/home" not in body["detail"] and store.url not in r.text


# ---- server failures ----------------------------------------------------------------------------------------
def test_a_server_failure_is_json_with_an_error_id_and_nothing_internal(env, caplog):
    client, platform, *_ = env

    async def broken():
        raise RuntimeError("cannot open /srv/secret/weights.bin on 10.1.2.3:6379 (pid=4242)")

    platform.model_infos = broken
    with caplog.at_level(logging.ERROR, logger="synthrad.gateway.errors"):
        r = client.get("/v1/models")
    body = assert_error(r, 500, "internal error", kind="internal")
    assert re.fullmatch(r"[0-9a-f]{12}", body["error_id"]) and body["error_id"] in body["detail"]
    for secret in ("/srv/secret", "10.1.2.3", "4242", "RuntimeError", "weights.bin"):
        assert secret not in r.text
    logged = [rec for rec in caplog.records if body["error_id"] in rec.getMessage()]
    assert logged and logged[0].exc_info and "weights.bin" in logged[0].getMessage()  # the details stay here
    # answered inside the app (so the request counter saw the 500), not by the server's plain-text fallback
    line = 'synthrad_requests_total{code="500",operation="GET /v1/models",protocol="rest"}'
    assert line in client.get("/metrics").text


def test_internal_errors_from_shared_layers_are_scrubbed(env):
    from services.gateway.errors import api_error, scrub

    assert scrub("no file /var/lib/synthrad/x.png at s3://bucket/k on 192.168.1.5:8000 pid 99") == \
        "no file <path> at <store> on <address> pid <hidden>"
    assert "/v1/batches" in scrub("use /v1/batches for more")  # API paths are kept
    assert "\ud800" not in scrub("bad \ud800 text")
    err = api_error(KeyError("/etc/passwd"))
    assert err.http_status == 500 and "/etc" not in err.message and "passwd" not in err.message


# ---- exceptions cross Ray intact ------------------------------------------------------------------------------
def test_generator_errors_survive_pickling_as_ray_does_it():
    import ray.cloudpickle as cloudpickle

    from services.generator.base import UnsupportedResolution, UnusedParam
    from services.generator.chunks import portable_error
    from services.gateway.errors import RateLimited, api_error

    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        e = loads(dumps(UnusedParam("model 'm' does not use 'sampler'", "sampler")))
        assert type(e) is UnusedParam and e.param == "sampler" and "sampler" in str(e)
        e = loads(dumps(UnsupportedResolution("cannot make 128 px", 128, 64)))
        assert (e.resolution, e.native) == (128, 64) and api_error(e).http_status == 422
        e = loads(dumps(RateLimited("slow down", retry_after_s=2.5)))
        assert e.retry_after_s == 2.5 and e.headers() == {"Retry-After": "3"}

    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(Odd("x", 1)))
    stand_in = portable_error(Odd("odd failure", 1))
    assert pickle.loads(pickle.dumps(stand_in)).args == ("Odd: odd failure",)
    same = UnusedParam("m", "p")
    assert portable_error(same) is same


def test_resolution_rule_of_the_generator_layer():
    from services.generator.base import GenerationParams, UnsupportedResolution

    g = TinyGenerator("t", resolution=64)  # default rule: native, or a resize to 16 .. 4x native
    g.check_params(GenerationParams(resolution=64))
    g.check_params(GenerationParams(resolution=256))
    g.check_params(GenerationParams(resolution=16))
    with pytest.raises(UnsupportedResolution, match="257"):
        g.check_params(GenerationParams(resolution=257))
    n = NativeOnly("n")
    assert n.describe_resolutions() == "32 only"
    with pytest.raises(UnsupportedResolution, match="32 only"):
        n.check_params(GenerationParams(resolution=64))

    class Multiple8(TinyGenerator):
        resolution_multiple = 8

    m = Multiple8("m", resolution=64)
    m.check_params(GenerationParams(resolution=24))
    with pytest.raises(UnsupportedResolution, match="multiples of 8"):
        m.check_params(GenerationParams(resolution=20))


# ---- the OpenAPI document describes all of this ----------------------------------------------------------------
def test_openapi_documents_id_formats_and_error_bodies(env):
    from services.common.store import new_batch_id, validate_batch_id
    from services.gateway.jobs import validate_job_id
    from services.gateway.schemas import BATCH_ID_PATTERN, JOB_ID_PATTERN

    client, *_ = env
    spec = client.get("/openapi.json").json()
    params = {(p, prm["name"]): prm for p, ops in spec["paths"].items() for op in ops.values()
              for prm in op.get("parameters", [])}
    assert params[("/v1/batches/{batch_id}", "batch_id")]["schema"]["pattern"] == BATCH_ID_PATTERN
    assert params[("/v1/jobs/{job_id}", "job_id")]["schema"]["pattern"] == JOB_ID_PATTERN
    assert params[("/v1/scores/{job_id}", "job_id")]["schema"]["pattern"] == JOB_ID_PATTERN
    assert "20261127t015959-1a2b3c4d5e6f" in params[("/v1/batches/{batch_id}", "batch_id")]["description"]
    # the patterns agree with the validators and with the ids actually issued
    bid = new_batch_id()
    assert re.fullmatch(BATCH_ID_PATTERN.strip("^$"), bid) and validate_batch_id(bid) == bid
    job = client.post("/v1/batches", json={"count": 1}).json()
    assert re.fullmatch(JOB_ID_PATTERN.strip("^$"), job["job_id"]) and validate_job_id(job["job_id"])
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for code, resp in op["responses"].items():
                if code.startswith(("4", "5")) and path != "/v1/readyz":
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, code)
    gen = spec["paths"]["/v1/generate"]["post"]["responses"]
    assert {"400", "401", "403", "413", "415", "422", "429", "500"} <= set(gen)
    assert "409" in spec["paths"]["/v1/scores/{job_id}"]["get"]["responses"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # 422 is the ErrorBody too
    # links: a created job leads to its job, a job to its batch, a batch to its files (clients and fuzzers follow)
    link = spec["paths"]["/v1/batches"]["post"]["responses"]["202"]["links"]["GetJob"]
    assert link["parameters"] == {"job_id": "$response.body#/job_id"}
    assert link["operationId"] == spec["paths"]["/v1/jobs/{job_id}"]["get"]["operationId"]
    assert "GetManifest" in spec["paths"]["/v1/batches/{batch_id}"]["get"]["responses"]["200"]["links"]


def test_one_error_vocabulary_one_mapping():
    import json

    import grpc

    from services.gateway import errors

    kinds = {}
    todo = [errors.ApiError]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        kinds[cls.kind] = cls
        assert (cls.http_status, cls.grpc_code) == errors.STATUS[cls.kind], cls
        assert "body" not in vars(cls) or cls is errors.ApiError  # the one body, extras through attributes
    assert set(kinds) == set(errors.STATUS)  # no mapping without an error, no error without a mapping
    r = errors.error_response(errors.RateLimited("slow down", retry_after_s=0.2))
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert json.loads(r.body) == {"error": "rate_limited", "detail": "slow down", "retry_after_s": 0.2}
    r = errors.error_response(errors.Unauthenticated("who?"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert len(json.loads(errors.error_response(errors.BadId("x" * 10_000)).body)["detail"]) == errors.MAX_DETAIL_CHARS
    code, details = errors.grpc_status(errors.NotFound("é" * 5000))
    assert code == grpc.StatusCode.NOT_FOUND and len(details.encode()) <= errors.MAX_DETAILS_BYTES
