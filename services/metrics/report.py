"""Self-contained HTML report of a scoring run (plots inline as base64 PNG; matplotlib Agg backend).

Sections: scores with confidence intervals and the extractor that made them, extractor stamps, warnings,
spatial-feature distributions real vs synthetic with the comparison table (KS test), SVM separability,
variety (mean images and their PNG sizes), sample grids of both sets, timings.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from services.metrics.result import ScoreResult

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.4em}th,td{border:1px solid #ccc;padding:4px 8px;font-size:13px}
th{background:#f0f0f0;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4e0;border-left:4px solid #f0a000;padding:6px 10px;margin:4px 0}
code{background:#f4f4f4;padding:1px 4px}h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.6em}
img.plot{max-width:100%}.grid{display:flex;gap:2em;flex-wrap:wrap}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(src: str, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="{src}">'


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.4g}"
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = ""
    for r in rows:
        body += "<tr>" + "".join(
            f'<td class="{"n" if isinstance(r.get(c), (int, float)) else ""}">{_fmt(r.get(c))}</td>' for c in cols
        ) + "</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _grid(samples: np.ndarray, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    k = min(16, len(samples))
    cols = 8
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.1 + 0.3))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i < k:
            im = samples[i]
            ax.imshow(im, cmap=None if im.ndim == 3 else "gray", vmin=0, vmax=1)
    fig.suptitle(title, fontsize=9)
    return _img(_png(fig), title)


def _spatial_plots(real: np.ndarray, synth: np.ndarray, names: list[str], show: list[str] | None = None) -> str:
    """Histograms real vs synthetic of the features in ``show`` (default: all ``names``, the array columns)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cols = [(n, names.index(n)) for n in (show if show is not None else names) if n in names]
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.2))
    for i, ax in enumerate(axes.ravel()):
        if i >= len(cols):
            ax.axis("off")
            continue
        name, j = cols[i]
        a, b = real[:, j], synth[:, j]
        lo, hi = np.percentile(np.concatenate([a, b]), [0.5, 99.5])
        if hi <= lo:  # constant feature (e.g. colourfulness of greyscale images)
            ax.text(0.5, 0.5, f"constant: {lo:.4g}", ha="center", va="center", transform=ax.transAxes, fontsize=9)
            ax.set_title(name, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        bins = np.linspace(lo, hi, 30)
        ax.hist(a, bins=bins, alpha=0.55, density=True, label="real", color="#1f77b4")
        ax.hist(b, bins=bins, alpha=0.55, density=True, label="synthetic", color="#d62728")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes.ravel()[0].legend(fontsize=8)
    fig.tight_layout()
    return _img(_png(fig), "spatial feature distributions")


def _means_plot(rmeans: dict, smeans: dict) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    items = [("real", k, v) for k, v in sorted(rmeans.items())] + [("synthetic", k, v) for k, v in sorted(smeans.items())]
    items = items[:12]
    fig, axes = plt.subplots(1, len(items), figsize=(1.6 * len(items), 2.0))
    for ax, (side, k, m) in zip(np.atleast_1d(axes), items):
        ax.imshow(m, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{side}\n{k}", fontsize=7)
        ax.axis("off")
    return _img(_png(fig), "per-class mean images")


def render_html(result: ScoreResult) -> str:
    from services.metrics.measures.spatial import SPATIAL_FEATURES

    rd, sd = result._real, result._synthetic
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>synthrad score report</title><style>{_CSS}</style></head><body>"]
    parts.append("<h1>synthrad scoring report</h1>")
    parts.append(
        f"<p><b>real</b>: {html.escape(result.real.description)} (n={result.real.n})<br>"
        f"<b>synthetic</b>: {html.escape(result.synthetic.description)} (n={result.synthetic.n})<br>"
        f"<b>metrics</b>: {', '.join(result.metrics)} · <b>extractor</b>: {html.escape(str(result.extractor))} · "
        f"created {html.escape(result.created)} · {html.escape(result.version)}</p>"
    )
    for w in result.warnings:
        parts.append(f'<div class="warn">{html.escape(w)}</div>')
    parts.append("<h2>Scores</h2>")
    rows = []
    for s in result.scores:
        ci = f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}] ({int((s.ci_level or 0) * 100)} %)" if s.ci_low is not None else ""
        rows.append({"score": s.name, "value": s.value, "CI": ci, "std": s.std, "extractor": s.extractor or "—",
                     "params": json.dumps(s.params, ensure_ascii=False)})
    parts.append(_table(rows, ["score", "value", "CI", "std", "extractor", "params"]))
    parts.append("<p>Only Fréchet distances made with the <code>inception</code> extractor are called FID; others are "
                 "named <code>FD_&lt;extractor&gt;</code>. FID CIs: centred percentile bootstrap over both sets.</p>")
    if result.stamps:
        parts.append("<h2>Extractor stamps</h2>")
        srows = []
        for name, st in result.stamps.items():
            srows.append({"extractor": name, "arch": st.get("arch"), "dims": st.get("dims"),
                          "weights sha256": (st.get("weights_sha256") or "")[:16] + "…",
                          "weights": st.get("weights_source"), "preprocessing": json.dumps(st.get("preprocessing")),
                          "dtype": st.get("dtype"), "key": st.get("key")})
        parts.append(_table(srows, ["extractor", "arch", "dims", "weights sha256", "weights", "preprocessing", "dtype", "key"]))
    if result.spatial:
        parts.append("<h2>Spatial features (real vs synthetic)</h2>")
        if rd is not None and sd is not None and rd.spatial is not None and sd.spatial is not None:
            parts.append(_spatial_plots(rd.spatial, sd.spatial, list(SPATIAL_FEATURES),
                                        show=[r["feature"] for r in result.spatial]))
        parts.append(_table(result.spatial, ["feature", "real_mean", "real_std", "synthetic_mean", "synthetic_std",
                                             "smd", "ks_statistic", "ks_pvalue"]))
        if result.spatial_omitted:
            parts.append("<p>Not shown (undefined for these sets): " + "; ".join(
                f"<code>{html.escape(k)}</code>: {html.escape(v)}" for k, v in result.spatial_omitted.items()) + "</p>")
    if result.separability:
        sep = result.separability
        parts.append("<h2>Separability (SVM on spatial features)</h2>")
        parts.append(_table(
            [{"kernel": k, "F1": sep[k]["f1"], "accuracy": sep[k]["accuracy"], "best params": json.dumps(sep[k]["best_params"])}
             for k in ("linear", "rbf")], ["kernel", "F1", "accuracy", "best params"]))
        parts.append(f"<p>{sep['n_train']} train / {sep['n_validation']} validation images (10 % / 90 %). "
                     f"Literature reference: F1 {sep['literature_f1_ddpm_cxr']} for DDPM chest X-rays. "
                     "Lower = harder to tell apart.</p>")
    if result.variety:
        parts.append("<h2>Variety (PNG size of per-class mean image; smaller = more varied)</h2>")
        vrows = []
        for side in ("real", "synthetic"):
            for cls, v in result.variety[side].items():
                vrows.append({"set": side, "class": cls, "n": v.get("n"), "png bytes": v["png_bytes"], "bits/pixel": v["bits_per_pixel"]})
        parts.append(_table(vrows, ["set", "class", "n", "png bytes", "bits/pixel"]))
        if rd is not None and sd is not None and rd.means and sd.means:
            parts.append(_means_plot(rd.means, sd.means))
    if (rd is not None and rd.samples is not None) or (sd is not None and sd.samples is not None):
        parts.append("<h2>Samples</h2><div class='grid'>")
        if rd is not None and rd.samples is not None:
            parts.append(_grid(rd.samples, "real"))
        if sd is not None and sd.samples is not None:
            parts.append(_grid(sd.samples, "synthetic"))
        parts.append("</div>")
    parts.append("<h2>Timings (s)</h2>")
    parts.append(_table([{"step": k, "seconds": v} for k, v in result.timings_s.items()], ["step", "seconds"]))
    parts.append("<details><summary>JSON</summary><pre>" + html.escape(result.to_json()) + "</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(result: ScoreResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(result), encoding="utf-8")
    return path
