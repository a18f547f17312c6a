"""A reader study in a real browser: Debian's chromium driven by Playwright, against the Ray-served gateway.

A test reader signs in with the token (typed, Enter), answers every case with the keyboard only (choice keys,
Likert digits, Enter — sometimes Enter twice, as a double submission), loses the server's reply to one answer (the
page retries with the same idempotency key), reloads the page midway and later opens the study again in a new
tab, and resumes where it stopped (after "Continue as …?"). The answers follow a fixed script by case kind and truth,
so the statistics are known by hand: the server's results and the owner page must show exactly those fractions.

``SYNTHRAD_SCREENSHOTS=docs/images pytest tests/e2e/test_study_browser.py`` refreshes the screenshots of the
docs (docs/studies.md); otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest

from services.studies.design import StudyPlan
from services.studies.service import StudyService, create_study
from repo_paths import NIH64
from study_data import make_real_folder

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
#: the answer script, by the n-th case of each kind (pairs) or of each truth (single cases)
PAIRS = ["truth", "truth", "wrong", "undecided"]  # the n-th pair case, whichever side holds the synthetic image
SYNTHETIC_SINGLES = ["synthetic", "synthetic", "real", "undecided"]
REAL_SINGLES = ["real", "synthetic", "real", "real"]
KEYS = {"left": "l", "right": "r", "undecided": "u", "real": "r", "synthetic": "s"}


@pytest.fixture(scope="module")
def study(served, tmp_path_factory):
    """A study fed by the platform's own batches: the served model (the shipped stylegan2-cxr64 when it is
    registered, else the tiny test generator) makes one batch with pleural effusion present and one absent over
    the REST API; the real images are the shared NIH set (a small labelled folder the tests make without it)."""
    from serving_fakes import wait_job
    from services.common.config import get_settings

    if not Path(CHROMIUM).exists():
        pytest.fail("the browser test needs Debian's chromium: apt-get install chromium (scripts/test.sh does)")
    model = served.real_model or "tiny"
    client = httpx.Client(base_url=served.http_url, timeout=60)
    ids = []
    for state in ("present", "absent"):
        r = client.post("/v1/batches", json={"model": model, "condition": {"pleural_effusion": state}, "count": 4,
                                             "seed": 40})
        ids.append(wait_job(client, r.json()["job_id"], timeout=300)["batch_id"])
    real = NIH64 if (NIH64 / "labels.csv").exists() else make_real_folder(tmp_path_factory.mktemp("real"), 8, 96)
    plan = StudyPlan(study_id="browser", title="Browser study", batches=ids, real_path=str(real),
                     modes=["pair", "single"], per_batch=2, likert=True, readers=["Dr Test", "Dr Owl"], seed=4)
    db = get_settings().resolved_studies_db  # the served gateway's study database
    made = create_study(plan, db, store_url=get_settings().resolved_store_url)
    key = {c["id"]: (c["kind"], c["truth"]) for c in json.loads(StudyService(db).export("browser", "json"))["cases"]}
    return served.http_url, made, key, db


def _answer_for(kind: str, truth: str, seen: dict) -> str:
    group = "pair" if kind == "pair" else truth
    n = seen[group] = seen.get(group, -1) + 1
    if kind == "pair":
        step = PAIRS[n]
        if step == "wrong":
            return "right" if truth == "left" else "left"
        return truth if step == "truth" else step
    return (SYNTHETIC_SINGLES if truth == "synthetic" else REAL_SINGLES)[n]


def test_a_reader_answers_every_case_by_keyboard_and_resumes(study, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, made, key, db = study
    token = made.reader_tokens["Dr Test"]
    shots = Path(os.environ.get("SYNTHRAD_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    seen: dict = {}
    given: list[tuple[str, str]] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{base}/study/")
        page.locator("#token").fill(token)
        page.keyboard.press("Enter")
        for i in range(12):
            if i == 5:  # a refresh midway
                page.reload()
            if i == 9:  # the browser closed and opened again: the token is remembered, the study resumes
                page.close()
                page = context.new_page()
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{base}/study/")
            if i in (5, 9):  # a remembered token asks first (a shared workstation): "Continue as Dr Test?"
                expect(page.locator("#resume-name")).to_have_text("Dr Test", timeout=30_000)
                expect(page.locator("#resume-continue")).to_be_focused()
                page.keyboard.press("Enter")
            expect(page.locator("#progress")).to_have_text(f"Case {i + 1} of 12", timeout=30_000)
            case = api.get("/v1/studies/browser/cases/current").json()["case"]
            assert case["position"] == i
            kind, truth = key[case["case_id"]]
            choice = _answer_for(kind, truth, seen)
            given.append((case["case_id"], choice))
            expect(page.locator("#choice-undecided")).to_be_enabled()
            page.keyboard.press(KEYS[choice])
            expect(page.locator(f"#choice-{choice}")).to_have_attribute("aria-pressed", "true")
            for q in case["likert"]:  # "Is pleural effusion present?" per image: 4 on the left/single, 2 right
                page.keyboard.press("2" if q["slot"] == "right" else "4")
            if i == 1:
                page.screenshot(path=str(shots / "study-reader.png"))
            if i == 3:  # the network drops the server's reply: the answer is stored, the page does not know it
                lost_replies = []

                def drop_the_reply(route):
                    if not lost_replies:
                        lost_replies.append(route.fetch().status)  # the request reaches the server ...
                        route.abort("connectionreset")  # ... its reply does not reach the page
                    else:
                        route.continue_()
                page.route("**/v1/studies/browser/answers", drop_the_reply)
            page.keyboard.press("Enter")
            if i == 3:
                expect(page.locator("#progress")).to_have_text("Case 5 of 12", timeout=30_000)  # retried, went on
                page.unroute("**/v1/studies/browser/answers")
                assert lost_replies == [200]
            if i % 4 == 2:
                page.keyboard.press("Enter")  # a double submission
        expect(page.locator("#done")).to_be_visible(timeout=30_000)
        expect(page.locator("#done")).to_contain_text("All 12 cases answered")

        # the owner page, signed in by its link, shows the same numbers
        owner = context.new_page()
        owner.goto(f"{base}/study/owner#key={made.owner_key}")
        expect(owner.locator("#results-pair")).to_contain_text("all", timeout=30_000)
        cell = lambda table, measure: owner.locator(
            f"#{table} tr[data-by='all'] td.{measure}").first.get_attribute("data-value")
        expect(owner.locator("#readers")).to_contain_text("Dr Test")
        owner.screenshot(path=str(shots / "study-owner.png"), full_page=True)
        owner_values = {(t, m): cell(t, m) for t in ("results-pair", "results-single")
                        for m in ("uar", "car", "accuracy", "tpr", "tnr")}
        owner_values[("results-single", "fir")] = cell("results-single", "fir")
        browser.close()
    assert [e for e in errors if "ERR_CONNECTION_RESET" not in e] == []  # the reset is the one the test made

    # stored: exactly one answer per case, as given (the double Enters stored nothing twice)
    conn = sqlite3.connect(db)
    rows = dict(conn.execute("SELECT a.case_id, a.choice FROM answers a WHERE a.study_id = 'browser' AND "
                             "a.reader_id = 'r1'").fetchall())
    assert rows == dict(given) and len(given) == 12
    assert conn.execute("SELECT COUNT(*) FROM answer_log WHERE study_id = 'browser'").fetchone()[0] == 12

    # the hand-computed statistics (docs/studies.md defines them):
    # pairs: 4 answers, 1 undecided, 3 decided, 2 correct; singles: synthetic -> synthetic, synthetic, real,
    # undecided; real -> real, synthetic, real, real: 8 answers, 1 undecided, 7 decided, TP 2, FN 1, TN 3, FP 1
    expected = {
        "results-pair": {"uar": 1 / 4, "car": 2 / 3, "accuracy": 2 / 4, "tpr": 2 / 3, "tnr": 2 / 3},
        "results-single": {"uar": 1 / 8, "car": 5 / 7, "accuracy": 5 / 8, "tpr": 2 / 3, "tnr": 3 / 4, "fir": 2 / 4},
    }
    owner_key = {"Authorization": f"Bearer {made.owner_key}"}
    res = httpx.get(f"{base}/v1/studies/browser/results", headers=owner_key, timeout=30).json()
    for kind in res["kinds"]:
        rates = next(g["rates"] for g in kind["groups"] if g["by"] == "all")
        for measure, value in expected[f"results-{kind['kind']}"].items():
            assert rates[measure]["value"] == value, (kind["kind"], measure)
            assert float(owner_values[(f"results-{kind['kind']}", measure)]) == value, (kind["kind"], measure)
    likert = {(s["source"], s["finding"], s["state"]): s for s in res["likert"]}
    assert sum(s["n"] for s in res["likert"]) == 4 * 2 + 8  # two ratings per pair, one per single image
    for s in likert.values():
        assert 2 <= s["mean"] <= 4
