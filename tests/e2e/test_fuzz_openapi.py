"""Fuzzing in CI: a bounded, reproducible schemathesis run over ``/openapi.json`` against the live platform.

The shared ``served`` platform (Ray Serve, the real gateway, generator and metrics deployments) answers
schemathesis' generated requests — valid ones, and in negative mode ones that break the schema (wrong types,
out-of-range numbers, odd strings) — and every response must be

* no server error (``not_a_server_error``),
* a status the operation documents (``status_code_conformance``),
* with a documented content type (``content_type_conformance``),
* and a body matching the documented schema (``response_schema_conformance``: ErrorBody for every error).

Phases: examples, coverage (boundary and invalid values per keyword), fuzzing, and stateful (following the
schema's OpenAPI links: a created job to its batch, the batch to its download, files and images), so real stored
batches are exercised too, not only 404s.

Bounded and reproducible: ``SYNTHRAD_FUZZ_MAX_EXAMPLES`` examples per operation (default 80: ~2 minutes, ~2000
requests, on 2 cores), a fixed seed (``SYNTHRAD_FUZZ_SEED``), no example database, one worker. Stored batch jobs
stay small: the schema given to schemathesis caps ``BatchRequest.count`` at 4, and POST /v1/batches is fuzzed with
valid data only (a negative-mode count such as 5000 would be a valid request the server accepts). Run it bigger by
hand with e.g. ``SYNTHRAD_FUZZ_MAX_EXAMPLES=450 pytest tests/e2e/test_fuzz_openapi.py`` (~9k requests, ~6 min).
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys

import httpx
import pytest

pytestmark = pytest.mark.slow

MAX_EXAMPLES = int(os.environ.get("SYNTHRAD_FUZZ_MAX_EXAMPLES", "80"))
SEED = os.environ.get("SYNTHRAD_FUZZ_SEED", "20261127")
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
CREATE_BATCH = "create_batch_v1_batches_post"
MAX_FUZZ_BATCH = 4


def _gateway_counts(url: str) -> collections.Counter:
    """REST responses the gateway answered so far, by (operation, status), from its Prometheus counter."""
    from prometheus_client.parser import text_string_to_metric_families

    out: collections.Counter = collections.Counter()
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "synthrad_requests_total" and sample.labels.get("protocol") == "rest":
                out[(sample.labels["operation"], sample.labels["code"])] += sample.value
    return out


def _bounded_schema(url: str, path) -> dict:
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    spec["components"]["schemas"]["BatchRequest"]["properties"]["count"]["maximum"] = MAX_FUZZ_BATCH
    path.write_text(json.dumps(spec))
    return spec


def _schemathesis(schema_path, url: str, mode: str, selection: list[str], phases: str,
                  report) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
           "run", str(schema_path), "--url", url, "--checks", CHECKS, "--mode", mode,
           "--max-examples", str(MAX_EXAMPLES), "--seed", SEED, "--generation-database", "none",
           # one worker: two threads parsing sources with ast concurrently trip a CPython 3.11 bug inside
           # hypothesis ("AST constructor recursion depth mismatch"), which shows up as a schemathesis error
           "--workers", "1", "--phases", phases, "--request-timeout", "120",
           "--continue-on-failure", "--no-color", "--report", "junit", "--report-junit-path", str(report),
           *selection]
    # cwd: schemathesis keeps a crash cache in ./.schemathesis; keep it out of the checkout
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=report.parent)


def test_generator_errors_cross_ray_as_4xx(served):
    """A generator's own errors (raised in its Ray replica) reach the client as 422 naming the problem — not as
    Ray's UnserializableException / a 500 with a remote traceback."""
    if served.real_model is None:
        pytest.skip("the shipped default model is not registered")
    with httpx.Client(base_url=served.http_url, timeout=120) as c:
        for path, body, needle in (
            ("/v1/generate", {"params": {"sampler": "ddim"}}, "sampler"),
            ("/v1/batches", {"count": 2, "params": {"sampler": "ddim"}}, "sampler"),
            ("/v1/batches", {"count": 2, "params": {"resolution": 1000}}, "1000"),  # a size it cannot make
        ):
            r = c.post(path, json={"model": served.real_model, **body})
            assert r.status_code == 422, (path, body, r.status_code, r.text[:300])
            detail = r.json()["detail"]
            assert needle in detail and served.real_model in detail, detail
            assert "Traceback" not in r.text and "ray::" not in r.text and "pid=" not in r.text


def test_fuzz_openapi_no_server_errors_and_schema_conformance(served, tmp_path):
    pytest.importorskip("schemathesis")
    url = served.http_url
    schema_path = tmp_path / "openapi.json"
    spec = _bounded_schema(url, schema_path)
    ops = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert CREATE_BATCH in ops, sorted(ops)
    before = _gateway_counts(url)
    runs = {  # batches first, so that the second run (and its stateful phase, following links) finds some
        "positive": _schemathesis(schema_path, url, "positive", ["--include-operation-id", CREATE_BATCH],
                                  "examples,coverage,fuzzing", tmp_path / "positive.xml"),
        "all": _schemathesis(schema_path, url, "all", ["--exclude-operation-id", CREATE_BATCH],
                             "examples,coverage,fuzzing,stateful", tmp_path / "all.xml"),
    }
    after = _gateway_counts(url)
    answered = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
    server_errors = {k: v for k, v in answered.items() if k[1].startswith("5")}
    total = sum(answered.values())
    for name, r in runs.items():
        assert r.returncode == 0, f"schemathesis ({name}) found problems:\n" + r.stdout[-12000:] + r.stderr[-3000:]
        assert re.search(r"\d+ generated, \d+ passed", r.stdout), r.stdout[-3000:]
    assert not server_errors, server_errors
    # the run really exercised the API (every operation, errors and successes)
    assert total >= 10 * MAX_EXAMPLES, answered
    codes = collections.Counter()
    for (_, code), v in answered.items():
        codes[code] += v
    assert codes["200"] and codes["202"] and codes["422"], codes
