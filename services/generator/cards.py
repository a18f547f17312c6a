"""Model cards: one markdown renderer for every family, from a typed description (:class:`ModelCard`).

A family says what its card contains with a ``describe(descriptor, *, conditioning, quality, benchmarks,
samples, notes) -> ModelCard`` function (:data:`DESCRIBERS`; families without one get
:func:`describe_generic`); :func:`render` lays every card out the same way: title, synthetic-data notice,
samples, model, data, training, conditional agreement, quality, speed, limitations, notes, weights hash.

    python -m services.generator.cards --descriptor services/generator/weights/ddpm-cxr64.json \
        --conditioning runs/ddpm/conditioning.json --bench runs/bench_diffusion_gpu.json \
        --samples ddpm-cxr64-grid.png --out services/generator/weights/ddpm-cxr64.md
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

SYNTHETIC_NOTICE = ("**Synthetic images only.** Every image this model produces is marked as synthetic (PNG text "
                    "chunk / DICOM ImageComments / manifest). Research and software-testing use only — not for "
                    "diagnosis.")

CONDITIONING_METHOD = (
    "The shipped independent classifier `cxr-classifier-64` (ResNet-18, trained on real NIH + Kermany images only, "
    "patient-disjoint split; card: `services/metrics/evaluation/classifier/cxr-classifier-64.md`) scores images "
    "generated with *finding present* vs *finding absent* (other findings unspecified); its AUC on real held-out "
    "(`valid` split) images is the reference — the ceiling this classifier allows — and findings it cannot tell "
    "apart on real images are flagged, not scored. See `services/metrics/evaluation/conditioning.py`.")


def conditioning_method(conditioning: dict | None) -> str:
    """:data:`CONDITIONING_METHOD`, naming the held-out split the result used (patient ``test`` or ``valid``)."""
    if conditioning and conditioning.get("split_by") == "patient":
        return CONDITIONING_METHOD.replace(
            "held-out (`valid` split)",
            f"held-out (`{conditioning.get('heldout_split', 'test')}` split, patient-disjoint 80/20 by hashed "
            "patient id)")
    return CONDITIONING_METHOD


#: family -> ``module:function`` building its :class:`ModelCard`
DESCRIBERS: dict[str, str] = {
    "stylegan2": "services.generator.models.stylegan2.card:describe",
    "ddpm": "services.generator.models.ddpm.card:describe",
}


@dataclass
class Table:
    """A markdown table; ``align`` per column: ``"l"`` (default) or ``"r"``; ``caption`` is a line above it."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    align: Sequence[str] | None = None
    caption: str | None = None

    def markdown(self) -> str:
        align = list(self.align or ["l"] * len(self.header))
        lines = [self.caption, ""] if self.caption else []
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Benchmark:
    """One speed table under ``title`` (empty: no sub-heading); ``table=None`` renders "not measured"."""

    title: str
    table: Table | None


#: NIH ChestX-ray14 labels behind synthrad's four findings (both shipped models are trained on NIH).
NIH_LABEL_MAPPING = Table(
    header=["our finding", "NIH ChestX-ray14 label(s)"],
    rows=[["atelectasis", "`Atelectasis`"],
          ["lung_opacity", "stand-in: `Infiltration` or `Consolidation` or `Pneumonia` (NIH has no lung-opacity "
                           "label; the noisiest of the four)"],
          ["pleural_effusion", "`Effusion`"],
          ["enlarged_cardiac_silhouette", "`Cardiomegaly`"]])


def grid_caption(columns: str) -> str:
    """Caption of a training sample grid (rows: :func:`services.generator.train.common.grid_conditions`)."""
    from services.generator.train.common import grid_conditions

    rows = "; ".join(name for name, _ in grid_conditions())
    return f"Rows: {rows} (each finding *present* with the other three *absent*). Columns: {columns}."


@dataclass
class ModelCard:
    """What a model card says. List fields are markdown bullets (without the leading ``-``)."""

    model_id: str
    family: str
    headline: str
    notice: str | None = None  # e.g. a short-training warning, shown as a quote under the title
    samples: str | None = None  # image path as referenced from the card
    samples_caption: str | None = None
    model: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    label_mapping: Table | None = None
    label_note: str | None = None
    training: list[str] = field(default_factory=list)
    conditioning: dict | None = None  # services.metrics.conditioning.evaluate_conditioning result
    quality: dict | None = None  # services.generator.train.quality.quality result
    benchmarks: list[Benchmark] = field(default_factory=list)
    benchmark_note: str | None = None
    limitations: list[str] = field(default_factory=list)
    notes: str | None = None
    sha256: str | None = None


def _bullets(items: Sequence[str]) -> list[str]:
    return [f"- {item}" for item in items]


def _fmt_scores(s) -> str:
    if not s:
        return "n/a"
    if isinstance(s, dict) and "error" in s:
        return f"error: {s['error']}"
    try:
        return ", ".join(f"{item.get('name')} = {item.get('value'):.4g}" for item in (s if isinstance(s, list) else [s]))
    except (AttributeError, TypeError, ValueError):
        return json.dumps(s)[:300]


def _legacy_quality_lines(quality: dict) -> list[str]:
    """A quality figure of the first format (generated and real training images vs a reference set)."""
    ref = quality.get("reference", "reference")
    lines = [f"{quality.get('n_generated', '?')} generated images (conditions drawn from the real training label "
             f"distribution) vs the `{ref}` reference; real training images vs the same reference give the floor. "
             "(Not a patient-disjoint held-out comparison.)", ""]
    for ex in ("inception", "cxr-encoder"):
        q = quality.get(ex)
        if not q:
            continue
        if "error" in q:
            lines.append(f"- {ex}: {q['error']}")
        else:
            lines.append(f"- {ex} features — generated: {_fmt_scores(q.get('generated'))}; "
                         f"real train: {_fmt_scores(q.get('real_train'))}")
    return lines


def _num(v, ci=None) -> str:
    if v is None:
        return "n/a"
    text = f"{v:.4g}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        text += f" [{ci[0]:.4g}, {ci[1]:.4g}]"
    elif isinstance(ci, dict) and ci.get("std") is not None:
        text += f" ± {ci['std']:.2g}"
    return text


def quality_table(quality: dict) -> Table:
    """Generated vs held-out beside the floor (real training vs the same held-out images), per extractor."""
    rows = []
    for name, b in (quality.get("extractors") or {}).items():
        if "error" in b:
            rows.append([f"`{name}`", "—", f"error: {b['error']}", "—", "—"])
            continue
        gen, floor = b.get("generated") or {}, b.get("floor") or {}
        ci = b.get("ci") or {}
        ratios = b.get("ratios") or {}
        for measure in dict.fromkeys([*gen, *floor]):
            ratio = ratios.get(f"{measure} / floor")
            rows.append([f"`{name}`", measure, _num(gen.get(measure), (ci.get("generated") or {}).get(measure)),
                         _num(floor.get(measure), (ci.get("floor") or {}).get(measure)),
                         "—" if ratio is None else f"{ratio:.2f}×"])
    n = quality.get("n")
    return Table(header=["extractor", "measure", f"generated vs held-out (n = {n} / {n})",
                         f"floor: real train vs held-out (n = {n} / {n})", "generated / floor"],
                 rows=rows, align=["l", "l", "r", "r", "r"])


def targets_lines(quality: dict) -> list[str]:
    targets = quality.get("targets") or []
    if not targets:
        return ["No quality target is set for this model and data set (issue 11 sets them for StyleGAN2 on NIH "
                "64 px and for Kermany models)."]
    rows = []
    for t in targets:
        thr = t.get("threshold")
        thr_text = _num(thr)
        if t.get("of_floor") is not None and thr is not None:
            thr_text += f" ({t['of_floor']:g} × floor)"
        result = {True: "**met**", False: "**not met**", None: "not measured"}[t.get("met")]
        rows.append([t.get("target"), f"`{t.get('extractor')}`", _num(t.get("value")), f"{t.get('op', '')} {thr_text}",
                     result])
    met = quality.get("targets_met")
    n_met = sum(t.get("met") is True for t in targets)
    verdict = {True: "all met", False: f"not met ({n_met} of {len(targets)} met)",
               None: f"not all measured ({n_met} of {len(targets)} met)"}[met]
    table = Table(header=["target (issue 11)", "extractor", "value", "required", "result"], rows=rows,
                  align=["l", "l", "r", "l", "l"])
    return [f"Targets: {verdict}.", "", table.markdown()]


def quality_lines(quality: dict) -> list[str]:
    """The card's quality section: a held-out figure (:mod:`services.generator.train.quality`), or an older
    reference-set figure as it was."""
    if "extractors" not in quality:
        return _legacy_quality_lines(quality)
    sp = quality.get("split") or {}
    n = quality.get("n")
    views = quality.get("views")
    views = "all views" if views in (None, "all") else "views " + ",".join(views)
    lines = [f"{n} generated images vs {n} held-out real images of `{quality.get('data')}` "
             f"(layout `{quality.get('layout')}`, {views}), all at {quality.get('resolution')} px. Held-out: the "
             f"`{sp.get('heldout', 'test')}` split, {sp.get('description', 'patient-disjoint')} "
             f"({sp.get('heldout_patients', '?')} patients in the set). Floor: {n} real training images "
             f"(`{sp.get('floor', 'train')}` split, {sp.get('floor_patients', '?')} patients, "
             f"{sp.get('shared_patients', 0)} shared with the held-out set) vs the same held-out images — what "
             "real data scores at this set size.",
             ""]
    if quality.get("conditions"):
        lines += [f"Conditions: {quality['conditions']}; seeds {quality.get('seeds', ['?'])[0]}…"
                  f"{quality.get('seeds', ['?'])[-1]}.", ""]
    for note in quality.get("notes") or []:
        lines += [f"> {note}", ""]
    lines += [quality_table(quality).markdown(), ""]
    exs = []
    for name, b in (quality.get("extractors") or {}).items():
        arch = (b.get("stamp") or {}).get("arch")
        exs.append(f"`{name}`" + (f" ({arch})" if arch else ""))
    if exs:
        lines += ["Extractors: " + "; ".join(exs) + ". Only the Inception-V3 numbers are called FID / KID; "
                  "another extractor's Fréchet distance is `FD_<extractor>`. Precision / recall: improved "
                  "precision / recall (Kynkäänniemi et al. 2019, k = 3) on the same features. Brackets: 95 % "
                  "bootstrap intervals where computed.", ""]
    if n is not None and n <= 2048:
        lines += [f"With {n} images per set (≤ 2048 Inception dimensions) FID is biased upwards and comparable only "
                  "at equal set sizes — hence the floor at the same size.", ""]
    lines += targets_lines(quality)
    return lines


def render(card: ModelCard) -> str:
    """The card as markdown."""
    out = [f"# {card.model_id} — {card.headline}", ""]
    if card.notice:
        out += [f"> {card.notice}", ""]
    out += [SYNTHETIC_NOTICE, ""]

    def section(title: str, body: Sequence[str]) -> None:
        out.extend([f"## {title}", "", *body, ""])

    if card.samples:
        section("Samples", [f"![samples]({card.samples})", *(["", card.samples_caption] if card.samples_caption else [])])
    if card.model:
        section("Model", _bullets(card.model))
    if card.data or card.label_mapping:
        body = _bullets(card.data)
        if card.label_mapping:
            body += ["", card.label_mapping.markdown()]
        if card.label_note:
            body += ["", card.label_note]
        section("Data", body)
    if card.training:
        section("Training", _bullets(card.training))
    if card.conditioning is not None or card.family in DESCRIBERS:
        table = "_not measured_"
        if card.conditioning:
            from services.metrics.conditioning import format_table

            table = format_table(card.conditioning)
        section("Conditional agreement", [conditioning_method(card.conditioning), "", table])
    if card.quality:
        section("Quality vs held-out real images", quality_lines(card.quality))
    if card.benchmarks:
        body = [card.benchmark_note, ""] if card.benchmark_note else []
        for b in card.benchmarks:
            if b.title:
                body += [f"### {b.title}", ""]
            body += [b.table.markdown() if b.table else f"_{b.title or 'speed'}: not measured._", ""]
        section("Speed", body[:-1])
    if card.limitations:
        section("Limitations", _bullets(card.limitations))
    if card.notes:
        section("Notes", [card.notes])
    if card.sha256:
        out += [f"sha256 of the weights: `{card.sha256}`", ""]
    return "\n".join(out)


def describe_generic(desc: dict, *, conditioning: dict | None = None, quality: dict | None = None,
                     benchmarks: Mapping[str, dict | None] | None = None, samples: str | None = None,
                     notes: str | None = None) -> ModelCard:
    """A card from the descriptor alone (families without a describer, e.g. a registered latent_diffusion
    checkpoint)."""
    model = [f"Family `{desc.get('family')}`, {desc.get('resolution')} px"
             + (", text-conditioned (prompts go raw to the text encoder)" if desc.get("text_conditioned") else "")
             + "."]
    if desc.get("description"):
        model.append(desc["description"])
    if desc.get("config"):
        model.append(f"Config `{json.dumps(desc['config'], sort_keys=True)}`.")
    return ModelCard(model_id=desc["model_id"], family=str(desc.get("family")),
                     headline=str(desc.get("description") or desc.get("family")), samples=samples, model=model,
                     conditioning=conditioning, quality=quality, notes=notes, sha256=desc.get("sha256"))


def describe(desc: dict, **facts: Any) -> ModelCard:
    """The :class:`ModelCard` of a descriptor, by its family's describer (see :data:`DESCRIBERS`)."""
    target = DESCRIBERS.get(str(desc.get("family")))
    if target is None:
        return describe_generic(desc, **facts)
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)(desc, **facts)


def _load(path: str | Path | None) -> dict | None:
    return json.loads(Path(path).read_text()) if path and Path(path).exists() else None


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--descriptor", required=True, help="the model's descriptor JSON")
    ap.add_argument("--conditioning", default=None, help="conditional-agreement JSON (services.metrics.conditioning)")
    ap.add_argument("--quality", default=None, help="quality JSON (services.generator.train.quality)")
    ap.add_argument("--bench", action="append", default=[], metavar="[TITLE=]FILE",
                    help="benchmark JSON (repeatable; TITLE= gives it a sub-heading)")
    ap.add_argument("--samples", default=None, help="sample grid path as referenced from the card")
    ap.add_argument("--notes", default=None)
    ap.add_argument("--out", default=None, help="write the card here (default: print it)")
    a = ap.parse_args(argv)
    benches = {}
    for spec in a.bench:
        title, _, path = spec.rpartition("=")
        benches[title] = _load(path)
    desc = json.loads(Path(a.descriptor).read_text())
    text = render(describe(desc, conditioning=_load(a.conditioning), quality=_load(a.quality),
                           benchmarks=benches or None, samples=a.samples, notes=a.notes))
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}")
    else:
        print(text)
    return text


if __name__ == "__main__":
    main()
