"""/v1/studies and /study/ on the gateway's app (API keys configured) and on the standalone study app."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving_fakes import make_platform
from services.gateway.rest import create_app
from services.gateway.studies_app import create_study_app
from services.studies.design import StudyPlan
from services.studies.service import create_study
from study_data import make_batches, make_real_folder

KEYS = [{"id": "ops", "key": "secret-admin", "scopes": ["admin"]}]


def _study(tmp_path, db, **kw):
    url, ids = make_batches(tmp_path / "store", n=4)
    real = make_real_folder(tmp_path / "real", n_each=4)
    plan = StudyPlan(**{**dict(batches=ids, real_path=str(real), per_batch=2, readers=["ann"], seed=1,
                               study_id="pilot", likert=True), **kw})
    return create_study(plan, db, store_url=url)


@pytest.fixture
def gateway(tmp_path):
    platform, _, _ = make_platform(tmp_path, api_keys=KEYS)
    made = _study(tmp_path, platform.settings.resolved_studies_db)
    with TestClient(create_app(platform), base_url="http://localhost") as client:
        yield client, made


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_a_reader_reads_with_the_token_alone(gateway):
    client, made = gateway
    R = _bearer(made.reader_tokens["ann"])
    assert client.get("/v1/models").status_code == 401  # the rest of the API still needs an API key
    s = client.get("/v1/studies/pilot/session", headers=R)
    assert s.status_code == 200 and s.json()["reader"]["name"] == "ann" and s.json()["total"] == 4
    assert s.headers["cache-control"] == "no-store"
    case = client.get("/v1/studies/pilot/cases/current", headers=R).json()["case"]
    assert [q["slot"] for q in case["likert"]] == ["left", "right"]
    img = client.get(case["images"][0]["url"], headers=R)
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert client.get(case["images"][0]["url"]).status_code == 401  # images need the token too
    body = {"case_id": case["case_id"], "choice": "undecided", "idempotency_key": "0123456789abcdef",
            "likert": [{"slot": "left", "finding": "pleural_effusion", "rating": 3},
                       {"slot": "right", "finding": "pleural_effusion", "rating": 4}]}
    a = client.post("/v1/studies/pilot/answers", json=body, headers=R)
    assert a.status_code == 200 and a.json() == {"answered": 1, "total": 4, "done": False, "replayed": False}
    assert client.post("/v1/studies/pilot/answers", json=body, headers=R).json()["replayed"] is True
    same = client.post("/v1/studies/pilot/answers", json={**body, "idempotency_key": "fedcba9876543210"}, headers=R)
    assert same.status_code == 200 and same.json()["replayed"] is True  # the stored answer again (another tab)
    r = client.post("/v1/studies/pilot/answers", json={**body, "choice": "left", "idempotency_key": "fedcba98765432"},
                    headers=R)
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    r = client.post("/v1/studies/pilot/answers", json={**body, "choice": "left"}, headers=R)
    assert r.status_code == 409 and "different answer" in r.json()["detail"]
    assert client.get("/v1/studies/pilot/cases/0", headers=R).status_code == 409


def test_the_owner_key_opens_results_and_nothing_else_does(gateway):
    client, made = gateway
    O, R, ADMIN = _bearer(made.owner_key), _bearer(made.reader_tokens["ann"]), {"X-API-Key": "secret-admin"}
    for path in ("/v1/studies/pilot", "/v1/studies/pilot/results", "/v1/studies/pilot/report",
                 "/v1/studies/pilot/export?format=json"):
        assert client.get(path, headers=O).status_code == 200, path
        for other in (R, ADMIN, {}):
            r = client.get(path, headers=other)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, other)
    for path in ("/v1/studies/pilot/session", "/v1/studies/pilot/cases/current"):
        assert client.get(path, headers=O).status_code == 401  # the owner is not a reader
    rep = client.get("/v1/studies/pilot/report", headers=O)
    assert rep.headers["content-type"].startswith("text/html") and "default-src 'none'" in \
        rep.headers["content-security-policy"]
    new = client.post("/v1/studies/pilot/readers", json={"name": "bob"}, headers=O)
    assert new.status_code == 201 and new.json()["reader"]["name"] == "bob"
    s = client.get("/v1/studies/pilot/session", headers=_bearer(new.json()["token"]))
    assert s.json()["reader"]["name"] == "bob"
    assert client.post("/v1/studies/pilot/readers", json={"name": "bob"}, headers=O).status_code == 409
    assert client.post("/v1/studies/pilot/readers", json={"name": "x\u0000y"}, headers=O).status_code == 422
    over = client.get("/v1/studies/pilot", headers=O).json()
    assert len(over["study"]["design_sha256"]) == 64 and over["study"]["design_sha256"] == made.design_sha256
    assert client.get("/v1/studies/pilot/export?format=xml", headers=O).status_code == 422
    import json as _json

    audit = [_json.loads(x) for x in client.app.state.platform.settings.resolved_audit_log.read_text().splitlines()]
    actions = [(a["action"], a.get("study_id"), a["outcome"]) for a in audit if a["action"].startswith("study.")]
    assert ("study.export", "pilot", "ok") in actions and ("study.add_reader", "pilot", "ok") in actions
    assert ("study.denied", "pilot", "denied") in actions
    assert not any(made.owner_key in line or "r." + made.reader_tokens["ann"].split(".r.")[1] in line
                   for line in map(str, audit))  # no secret in the audit log


def test_pages_assets_and_openapi(gateway):
    client, _ = gateway
    page = client.get("/study/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "http" not in csp
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, no external font
    assert client.get("/study/owner").status_code == 200
    for name, ctype in (("common.js", "text/javascript"), ("reader.js", "text/javascript"), ("owner.js", "text/javascript"), ("study.css", "text/css")):
        r = client.get(f"/study/assets/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
        assert "http://" not in r.text and "https://" not in r.text
    for bad in ("../reader.html", "reader.html", "x.js", "%2e%2e%2fservice.py"):
        assert client.get(f"/study/assets/{bad}").status_code == 404
    assert client.get("/study", follow_redirects=False).headers["location"] == "/study/"
    spec = client.get("/openapi.json").json()
    paths = [p for p in spec["paths"] if p.startswith("/v1/studies")]
    assert "/v1/studies/{study_id}/answers" in paths and "/v1/studies/{study_id}/results" in paths
    assert not any(p.startswith("/study") for p in spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_bad_inputs_are_4xx_naming_the_problem(gateway):
    client, made = gateway
    R = _bearer(made.reader_tokens["ann"])
    case = client.get("/v1/studies/pilot/cases/current", headers=R).json()["case"]
    cases = [
        ({"case_id": case["case_id"], "choice": "maybe", "idempotency_key": "0123456789"}, 422, "choice"),
        ({"case_id": "nope", "choice": "left", "idempotency_key": "0123456789"}, 422, "case_id"),
        ({"case_id": case["case_id"], "choice": "left", "idempotency_key": "0123456789", "extra": 1}, 422, "extra"),
        ({"case_id": case["case_id"], "choice": "left", "idempotency_key": "0123456789"}, 422, "missing"),
        ({"case_id": case["case_id"], "choice": "real", "idempotency_key": "0123456789",
          "likert": [{"slot": "left", "finding": "pleural_effusion", "rating": 3},
                     {"slot": "right", "finding": "pleural_effusion", "rating": 3}]}, 422, "not an answer"),
        ({"case_id": "c0000000000000000", "choice": "left", "idempotency_key": "0123456789"}, 404, "no case"),
        ({"case_id": case["case_id"], "choice": "left", "idempotency_key": "0123456789",
          "likert": [{"slot": "left", "finding": "pleural_effusion", "rating": True},
                     {"slot": "right", "finding": "pleural_effusion", "rating": "4"}]}, 422, "rating"),
    ]
    for body, status, words in cases:
        r = client.post("/v1/studies/pilot/answers", json=body, headers=R)
        assert r.status_code == status and words in r.text, (body, r.status_code, r.text)
    assert client.post("/v1/studies/pilot/answers", content=b"{", headers={**R, "content-type":
                                                                          "application/json"}).status_code == 400
    assert client.get("/v1/studies/Bad_Id/session", headers=R).status_code == 422
    assert client.get("/v1/studies/pilot/images/zz", headers=R).status_code == 422
    assert client.get("/v1/studies/pilot/images/" + "0" * 24, headers=R).status_code == 404
    assert client.get("/v1/studies/other/session", headers=R).status_code == 401
    assert client.get("/v1/studies/pilot/cases/99", headers=R).status_code == 404
    r = client.get("/v1/studies/pilot/session", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and "/" not in r.json()["detail"].replace("(Authorization", "")


def test_a_client_guessing_tokens_is_locked_out_and_audited_once(tmp_path):
    from services.common.config import SecuritySettings, Settings

    db = tmp_path / "studies.sqlite3"
    made = _study(tmp_path, db)
    settings = Settings(home=tmp_path / "home", security=SecuritySettings(auth_failures_per_minute=5))
    client = TestClient(create_study_app(settings, db), base_url="http://127.0.0.1")
    statuses = [client.get("/v1/studies/pilot", headers=_bearer(f"pilot.o.{'x' * 43}{i}")).status_code
                for i in range(8)]
    assert statuses[:4] == [401] * 4 and statuses[-1] == 429
    r = client.get("/v1/studies/pilot", headers=_bearer(f"pilot.o.{'y' * 44}"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert client.get("/v1/studies/pilot", headers=_bearer(made.owner_key)).status_code == 200  # never locked out
    audit = settings.resolved_audit_log.read_text().splitlines()
    assert sum('"study.denied"' in line for line in audit) == 1


def test_the_standalone_app_serves_the_same_routes(tmp_path):
    from services.common.config import Settings

    db = tmp_path / "studies.sqlite3"
    made = _study(tmp_path, db)
    client = TestClient(create_study_app(Settings(home=tmp_path / "home"), db), base_url="http://127.0.0.1")
    assert client.get("/", follow_redirects=False).headers["location"] == "/study/"
    assert client.get("/study/").status_code == 200
    R = _bearer(made.reader_tokens["ann"])
    assert client.get("/v1/studies/pilot/session", headers=R).json()["total"] == 4
    assert client.get("/v1/studies/pilot/session", headers={**R, "host": "attacker.example"}).status_code == 400
    assert client.get("/v1/nothing").status_code == 404
