"""The owner's report of a reader study: one self-contained HTML page (inline CSS, figures as base64 PNG drawn with
matplotlib's Agg canvas, no external assets) of :class:`~services.studies.stats.StudyResults`.

Every string that reaches the page (titles, reader names, model ids, instructions) is escaped.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Sequence

from services.common.findings import HUMAN_NAMES
from services.common.atomic import write_atomic
from services.metrics.report import _CSS
from services.studies.model import LIKERT_LABELS, LIKERT_LEVELS, StudyInfo
from services.studies.stats import Estimate, GroupRates, KindResults, StudyResults

KIND_TITLES = {"pair": "Pair cases: which image is synthetic?", "single": "Single images: real or synthetic?"}
RATE_COLUMNS = (("uar", "UAR"), ("car", "CAR"), ("accuracy", "accuracy"), ("tpr", "TPR"), ("tnr", "TNR"),
                ("fir", "FIR"))
_EXTRA_CSS = "td small{color:#666}.def{color:#444}"


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def fmt_estimate(e: Estimate | None) -> str:
    """``0.625 [0.31, 0.86]`` (the 95 % Wilson CI) and ``5/8`` below; ``n/a`` when undefined."""
    if e is None:
        return '<td class="n">n/a</td>'
    if e.value is None:
        return f'<td class="n">n/a<br><small>{e.k}/{e.n}</small></td>'
    return (f'<td class="n">{e.value:.3f} [{e.low:.2f}, {e.high:.2f}]<br>'
            f'<small>{e.k}/{e.n}</small></td>')


def _num(v, digits: int = 3) -> str:
    if v is None:
        return '<td class="n">n/a</td>'
    if isinstance(v, float):
        return f'<td class="n">{v:.{digits}f}</td>'
    return f'<td class="n">{_e(v)}</td>'


def _table(head: Sequence[str], rows: Sequence[str]) -> str:
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(src: str, alt: str) -> str:
    return f'<img class="plot" alt="{_e(alt)}" src="{src}">'


def _plain(text: str) -> str:
    """A label for matplotlib, with ``$`` escaped so a name never turns into mathtext."""
    return str(text).replace("$", r"\$")


def _finding_name(finding: str) -> str:
    return HUMAN_NAMES.get(finding, finding)


# ---------------------------------------------------------------------------------------------------- figures


def _car_plot(kr: KindResults) -> str | None:
    """CAR with its 95 % CI per source and per (finding, state), side by side."""
    from matplotlib.figure import Figure

    panels = [(by, [g for g in kr.groups if g.by == by]) for by in ("source", "finding")]
    panels = [(by, gs) for by, gs in panels if gs]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels) + 1, 3.4))
    for i, (by, groups) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        xs = range(len(groups))
        vals = [g.rates.car.value if g.rates.car.value is not None else float("nan") for g in groups]
        lo = [(g.rates.car.value - g.rates.car.low) if g.rates.car.value is not None else 0.0 for g in groups]
        hi = [(g.rates.car.high - g.rates.car.value) if g.rates.car.value is not None else 0.0 for g in groups]
        ax.bar(xs, vals, yerr=[lo, hi], capsize=4, color="#4c78a8")
        ax.axhline(0.5, color="#999", lw=0.8, ls="--")  # chance for a pair case
        ax.set_xticks(list(xs), [_plain(g.label) for g in groups], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("CAR (95 % CI)")
        ax.set_title(f"by {by}", fontsize=10)
    return _png(fig)


def _likert_plot(results: StudyResults) -> str | None:
    """Stacked counts of the ratings 1..5 per (finding, state, source)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not results.likert:
        return None
    fig = Figure(figsize=(max(5.0, 0.9 * len(results.likert) + 2), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    xs = list(range(len(results.likert)))
    colors = ["#2166ac", "#92c5de", "#dddddd", "#f4a582", "#b2182b"]
    bottom = [0] * len(xs)
    for level, color in zip(LIKERT_LEVELS, colors):
        counts = [s.counts[level - 1] for s in results.likert]
        ax.bar(xs, counts, bottom=bottom, color=color, label=f"{level} {LIKERT_LABELS[level]}")
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set_xticks(xs, [_plain(f"{_finding_name(s.finding)} {s.state}\n{s.source}") for s in results.likert],
                  rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ratings")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


# ---------------------------------------------------------------------------------------------------- sections


def _facts(info: StudyInfo) -> str:
    facts = [("study", info.id), ("title", info.title), ("modes", ", ".join(info.modes)), ("cases", info.n_cases),
             ("Likert questions", "yes" if info.likert else "no"),
             ("answers may be revised", "yes" if info.allow_revise else "no"),
             ("image size", f"{info.image_size} px"), ("seed", info.seed), ("created", info.created),
             ("readers", len(info.readers)), ("design sha256", info.design_sha256 or "n/a")]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    instr = f"<p><b>Instructions:</b> {_e(info.instructions)}</p>" if info.instructions else ""
    return f"<h2>Study</h2><table>{rows}</table>{instr}"


def _progress(progress: Sequence[dict]) -> str:
    rows = []
    for p in progress:
        answered, total = int(p.get("answered", 0)), int(p.get("total", 0))
        share = f"{answered / total:.0%}" if total else "n/a"
        rows.append(f"<tr><td>{_e(p.get('name') or p.get('reader_id', ''))}</td>"
                    f"<td><code>{_e(p.get('reader_id', ''))}</code></td><td class=\"n\">{answered}</td>"
                    f"<td class=\"n\">{total}</td><td class=\"n\">{share}</td></tr>")
    return "<h2>Reader progress</h2>" + _table(["reader", "id", "answered", "cases", "done"], rows)


def _group_row(g: GroupRates) -> str:
    group = "all answers" if g.by == "all" else f"{g.by}: {g.label}"
    cells = "".join(fmt_estimate(getattr(g.rates, attr)) for attr, _ in RATE_COLUMNS)
    return f"<tr><td>{_e(group)}</td><td class=\"n\">{g.rates.n}</td>{cells}</tr>"


def _kind(kr: KindResults) -> str:
    out = [f"<h2>{_e(KIND_TITLES.get(kr.kind, kr.kind))}</h2>",
           _table(["group", "n"] + [label for _, label in RATE_COLUMNS], [_group_row(g) for g in kr.groups])]
    if kr.kind == "pair":
        out.append('<p class="def"><small>For pairs TPR = TNR = CAR (a decided answer names one image '
                   'synthetic and the other real); FIR is defined for single images only.</small></p>')
    plot = _car_plot(kr)
    if plot:
        out.append(f"<h3>CAR by source and by finding ({_e(kr.kind)})</h3>" + _img(plot, f"CAR {kr.kind}"))
    return "\n".join(out)


def _agreement(results: StudyResults, names: dict[str, str]) -> str:
    rows = [f"<tr><td>{_e(k.kind)}</td><td>{_e('Cohen' if k.method == 'cohen' else 'Fleiss')}</td>"
            f"<td>{_e(', '.join(names.get(r, r) for r in k.readers))}</td><td class=\"n\">{k.n_cases}</td>"
            f"{_num(k.kappa)}</tr>" for k in results.agreement]
    if not rows:
        return "<h2>Agreement</h2><p>Agreement needs at least two readers of the same case kind.</p>"
    return "<h2>Agreement</h2>" + _table(["kind", "kappa", "readers", "cases", "value"], rows)


def _likert(results: StudyResults) -> str:
    if not results.likert:
        return ""
    rows = []
    for s in results.likert:
        ci = (f" [{s.mean_low:.2f}, {s.mean_high:.2f}]" if s.mean_low is not None and s.mean_high is not None
              else "")
        mean = f'<td class="n">{s.mean:.2f}{ci}</td>' if s.mean is not None else '<td class="n">n/a</td>'
        counts = "".join(f'<td class="n">{c}</td>' for c in s.counts)
        rows.append(f"<tr><td>{_e(_finding_name(s.finding))}</td><td>{_e(s.state)}</td><td>{_e(s.source)}</td>"
                    f"<td class=\"n\">{s.n}</td>{mean}{_num(s.median, 1)}{counts}{fmt_estimate(s.consistent)}</tr>")
    head = ["finding", "state", "source", "n", "mean [t 95 % CI]", "median"] + [str(x) for x in LIKERT_LEVELS] + [
        "consistent"]
    out = ["<h2>Likert: is the finding present?</h2>", _table(head, rows),
           "<p class=\"def\"><small>1 definitely absent … 5 definitely present; consistent = rating ≥ 4 when the "
           "image should show the finding, ≤ 2 when it should not.</small></p>"]
    plot = _likert_plot(results)
    if plot:
        out.append("<h3>Likert ratings by finding and source</h3>" + _img(plot, "Likert ratings"))
    return "\n".join(out)


def render_report(results: StudyResults, info: StudyInfo | None = None, progress: Sequence[dict] = ()) -> str:
    """The whole report as one HTML string."""
    title = results.title or (info.title if info else "") or "Reader study"
    names = {r.id: r.name for r in info.readers} if info else {}
    names.update({str(p.get("reader_id")): str(p.get("name")) for p in progress if p.get("name")})
    parts = [f"<h1>{_e(title)}</h1>",
             f"<p>Study <code>{_e(results.study_id or (info.id if info else ''))}</code>: "
             f"{results.n_answers} answers from {results.n_readers} readers.</p>",
             f'<p class="def">Definitions of every measure (UAR, CAR, accuracy, TPR, TNR, FIR, kappa, Likert) and a '
             f'worked example: <a href="{_e(results.definitions)}">{_e(results.definitions)}</a> in the synthrad '
             f'repository. Intervals are 95 % (Wilson for proportions, t for Likert means).</p>']
    if info is not None:
        parts.append(_facts(info))
    if progress:
        parts.append(_progress(progress))
    if not results.kinds:
        parts.append("<p>No answers yet.</p>")
    parts += [_kind(kr) for kr in results.kinds]
    if results.kinds:
        parts.append(_agreement(results, names))
    parts.append(_likert(results))
    body = "\n".join(p for p in parts if p)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}{_EXTRA_CSS}</style></head><body>{body}</body></html>")


def write_report(path: str | Path, html_text: str) -> Path:
    """Write the report atomically (``services.common.atomic.write_atomic``)."""
    return write_atomic(path, html_text)


__all__ = ["fmt_estimate", "render_report", "write_report"]
