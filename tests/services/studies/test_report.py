"""services.studies.report: a self-contained, escaped HTML report, written atomically."""

from __future__ import annotations

import base64
import re

import pytest

from services.studies.model import AnswerRow, LikertRow, Reader, StudyInfo
from services.studies.report import fmt_estimate, render_report, write_report
from services.studies.stats import compute_results, estimate

HOSTILE = "<script>alert('x')</script>"
PE = (("pleural_effusion", "present"),)


def _rows() -> list[AnswerRow]:
    lk = (LikertRow("left", "synthetic", "gan", "pleural_effusion", "present", 5),
          LikertRow("right", "real", None, "pleural_effusion", "present", 2))
    out = []
    for reader, choices in (("r1", ("left", "right", "undecided")), ("evil", ("left", "left", "right"))):
        for i, c in enumerate(choices):
            out.append(AnswerRow(reader, f"P{i}", "pair", c, "left", "gan" if i else "d$iff", strata=PE, likert=lk))
        out.append(AnswerRow(reader, "S1", "single", "synthetic", "synthetic", "gan", strata=PE))
        out.append(AnswerRow(reader, "S2", "single", "undecided", "real", "gan"))
    return out


READERS = [Reader("r1", "Reader One"), Reader("evil", HOSTILE)]
INFO = StudyInfo(id="st-1", title="Study <b>one</b>", instructions="Pick the synthetic one & go", allow_revise=True,
                 likert=True, modes=("pair", "single"), n_cases=5, image_size=512, created="2025-01-01T00:00:00Z",
                 seed=7, readers=READERS)
PROGRESS = [{"reader_id": "r1", "name": "Reader One", "answered": 5, "total": 5},
            {"reader_id": "evil", "name": HOSTILE, "answered": 4, "total": 5}]


@pytest.fixture(scope="module")
def page() -> str:
    res = compute_results(_rows(), study_id="st-1", title="Study <b>one</b>", readers=READERS)
    return render_report(res, INFO, PROGRESS)


def test_tables_present(page):
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    for text in ("Pair cases", "Single images", "Agreement", "Likert", "Reader progress", "UAR", "CAR",
                 "accuracy", "TPR", "TNR", "FIR", "docs/studies.md", "Cohen", "Fleiss", "pleural effusion"):
        assert text in page, text
    assert page.count("<table>") >= 6  # facts, progress, pair, single, agreement, Likert
    # the pair "all" row: 6 answers, 1 undecided, 3 correct → accuracy 3/6, CAR 3/5
    assert "0.600 [" in page and "<small>3/5</small>" in page and "<small>3/6</small>" in page


def test_escapes_every_string(page):
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "Study &lt;b&gt;one&lt;/b&gt;" in page and "<b>one</b>" not in page
    assert "Pick the synthetic one &amp; go" in page


def test_self_contained(page):
    assert not re.search(r"https?://", page)
    assert 'src="http' not in page and "<link" not in page and "<script" not in page.lower()


def test_embeds_png_plots(page):
    srcs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(srcs) == 3  # CAR per kind (pair, single) + Likert counts
    for s in srcs:
        assert base64.b64decode(s)[:8] == b"\x89PNG\r\n\x1a\n"


def test_formats():
    assert fmt_estimate(estimate(5, 8)) == '<td class="n">0.625 [0.31, 0.86]<br><small>5/8</small></td>'
    assert "n/a" in fmt_estimate(None) and "n/a" in fmt_estimate(estimate(0, 0))


def test_empty_study_renders():
    page = render_report(compute_results([], study_id="e", title="empty"))
    assert "No answers yet" in page and "data:image/png" not in page


def test_write_report_atomic(tmp_path, page):
    target = tmp_path / "sub" / "report.html"
    assert write_report(target, page) == target
    assert target.read_text(encoding="utf-8") == page
    write_report(target, "<html>second</html>")
    assert target.read_text(encoding="utf-8") == "<html>second</html>"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_write_report_failure_leaves_no_temp(tmp_path, monkeypatch):
    import os

    target = tmp_path / "report.html"
    target.write_text("old", encoding="utf-8")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_report(target, "new")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


@pytest.mark.parametrize("choice", ["left", "right"])  # CAR exactly 1 and exactly 0: bounds a rounding hair off
def test_extreme_rates_plot(choice):
    rows = [AnswerRow(f"r{i}", f"c{i}", "pair", choice, "left", "m", (("pleural_effusion", "present"),))
            for i in range(3)]
    html_text = render_report(compute_results(rows, study_id="x"))
    assert html_text.count("data:image/png;base64,") >= 1
