"""Self-contained HTML report of one or more evaluations (figures inline as base64 PNG; no external assets).

Per evaluation: what was evaluated, the headline numbers, every table, the figures (plots, nearest-neighbour
galleries, marker galleries), warnings, and the provenance block (extractors with weights sha256, classifier,
seeds, set sizes, data, options) — so a number in the report can be traced to what made it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from services.metrics.evaluation.result import EvaluationResult, Table
from services.metrics.report import _CSS


def _cell(v: Any) -> str:
    if v is None:
        return '<td class="n">n/a</td>'
    if isinstance(v, bool):
        return f"<td>{'yes' if v else 'no'}</td>"
    if isinstance(v, float):
        text = f"{v:.4g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.3f}"
        return f'<td class="n">{text}</td>'
    if isinstance(v, int):
        return f'<td class="n">{v}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in t.rows)
    note = f"<p><small>{html.escape(t.note)}</small></p>" if t.note else ""
    return f"<h3>{html.escape(t.title)}</h3><table><tr>{head}</tr>{body}</table>{note}"


def _section(r: EvaluationResult) -> str:
    out = [f"<h2>{html.escape(r.kind)}: {html.escape(r.subject.description)}</h2>"]
    subj = {k: v for k, v in r.subject.model_dump().items() if v not in (None, "", 0)}
    out.append("<p>" + ", ".join(f"{html.escape(k)} <code>{html.escape(str(v))}</code>" for k, v in subj.items())
               + f"; {r.seconds:.1f} s; {html.escape(r.created)}</p>")
    if r.headline:
        out.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th>{_cell(v)}</tr>" for k, v in r.headline.items())
                   + "</table>")
    out += [_table(t) for t in r.tables]
    for f in r.figures:
        cap = f"<figcaption>{html.escape(f.caption)}</figcaption>" if f.caption else ""
        out.append(f"<figure><h3>{html.escape(f.title)}</h3><img class=\"plot\" alt=\"{html.escape(f.title)}\" "
                   f"src=\"data:image/png;base64,{f.png_base64}\">{cap}</figure>")
    out += [f'<div class="warn">{html.escape(w)}</div>' for w in r.warnings]
    prov = json.dumps(r.provenance.model_dump(mode="json"), indent=1, default=str)
    out.append(f"<details><summary>Provenance</summary><pre>{html.escape(prov)}</pre></details>")
    return "\n".join(out)


def render_html(results: Sequence[EvaluationResult], title: str = "synthrad evaluation") -> str:
    body = "\n".join(_section(r) for r in results)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def write_html(results: Sequence[EvaluationResult], path: str | Path, title: str = "synthrad evaluation") -> Path:
    """Write the report atomically (temp file + rename)."""
    from services.common.atomic import write_atomic

    return write_atomic(path, render_html(results, title))
