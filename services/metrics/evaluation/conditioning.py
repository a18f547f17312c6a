"""Evaluation "conditioning": does each generated image show the finding it was asked for?

The shipped independent classifier (``classifier/``: ResNet-18 trained on real labelled NIH + Kermany images only)
gives every image the probability of each finding it was conditioned on (``present`` / ``absent``; unspecified
findings are not scored). Per finding of the batch:

* mean probability among the images asked "present" and among those asked "absent";
* **generated AUC**: ROC-AUC of that probability separating the two groups, with a stratified bootstrap CI;
* **real AUC**: the same classifier's AUC on real held-out images (its card; CI included) — the ceiling this
  classifier allows;
* **ratio** generated / real: ≈ 1 means the condition is followed as well as this classifier can tell on real
  images (> 1: the generated groups are *more* separable than real ones, e.g. exaggerated findings).

A finding is *flagged* (ratio ``None``, with a warning) when the classifier is no better than chance on real
images for it (real AUC CI lower bound ≤ 0.5: a ratio would be noise) or when the batch lacks ``min_group``
images asked "present" and ``min_group`` asked "absent". The headline ratio averages the usable findings only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from services.common.findings import FINDINGS
from services.metrics.evaluation.inputs import SyntheticSet
from services.metrics.evaluation.progress import ProgressFn, Steps
from services.metrics.evaluation.registry import Evaluation, register_evaluation
from services.metrics.evaluation.result import EvaluationResult, Figure, Provenance, Subject, Table
from services.metrics.errors import MetricsError

OK, CHANCE, NO_PAIR, NO_REFERENCE = "ok", "classifier at chance on real images", "no present/absent pair", \
    "no real reference"


class ConditioningOptions(BaseModel):
    ci_level: float = Field(0.95, gt=0.0, lt=1.0, description="confidence level of the generated-AUC bootstrap CI")
    bootstrap: int = Field(1000, ge=0, le=100_000,
                           description="bootstrap replicates of the generated AUC's CI (0: no CI)")
    seed: int = Field(0, description="seed of the bootstrap resampling")
    min_group: int = Field(2, ge=1, description="fewest images asked 'present' and asked 'absent' for a finding to "
                                                "be scored (otherwise it is flagged)")
    reference: str = Field("auto", description="the classifier card's real held-out test set each generated AUC is "
                                               "compared with: auto (the card's reference per finding: NIH "
                                               "ChestX-ray14), nih-chestxray14-64 or kermany-pneumonia-224 (lung "
                                               "opacity only; for paediatric models)")
    per_image: bool = Field(True, description="list each image's probability of every requested finding in details")
    figure: bool = Field(True, description="add a bar chart of generated vs real AUC per finding")


def _status(real: dict | None, gen_auc: float | None) -> str:
    if real is None or real.get("auc") is None:
        return NO_REFERENCE
    if real.get("ci_low") is None or real["ci_low"] <= 0.5:
        return CHANCE
    return OK if gen_auc is not None else NO_PAIR


def _mean(v: np.ndarray) -> float | None:
    return float(v.mean()) if len(v) else None


def per_finding(probs: np.ndarray, codes: np.ndarray, thresholds: dict[str, float], real: dict[str, dict | None],
                options: ConditioningOptions) -> dict[str, dict[str, Any]]:
    """The per-finding agreement of ``probs`` (n, 4) with the requested ``codes`` (n, 4; 0 absent, 1 present,
    2 unspecified) against the real references ``real[finding]`` (card entries: auc, ci_low, ci_high, ...)."""
    from services.metrics.evaluation.stats import bootstrap_auc

    probs, codes = np.asarray(probs, np.float64), np.asarray(codes)
    out = {}
    for j, f in enumerate(FINDINGS):
        pres, absn = codes[:, j] == 1, codes[:, j] == 0
        n_p, n_a = int(pres.sum()), int(absn.sum())
        auc = lo = hi = None
        if n_p >= options.min_group and n_a >= options.min_group:
            y = codes[pres | absn, j].astype(int)
            auc, lo, hi = bootstrap_auc(y, probs[pres | absn, j], options.bootstrap, options.ci_level, options.seed + j)
        thr = float(thresholds[f])
        sens = _mean((probs[pres, j] > thr).astype(float))
        spec = _mean((probs[absn, j] <= thr).astype(float))
        bal = None if sens is None or spec is None else (sens + spec) / 2
        ref = real.get(f)
        status = _status(ref, auc)
        ratio = auc / ref["auc"] if status == OK else None
        out[f] = {"n_present": n_p, "n_absent": n_a, "mean_p_present": _mean(probs[pres, j]),
                  "mean_p_absent": _mean(probs[absn, j]), "threshold": thr, "sensitivity": sens, "specificity": spec,
                  "balanced_accuracy": bal,
                  "generated": {"auc": auc, "ci_low": lo, "ci_high": hi, "ci_level": options.ci_level},
                  "real": ref, "ratio": ratio, "status": status, "usable": status == OK}
    return out


def warnings_of(rows: dict[str, dict], min_group: int) -> list[str]:
    out = []
    for f, r in rows.items():
        ref = r["real"] or {}
        if r["status"] == CHANCE:
            out.append(f"{f}: not scored — the classifier is no better than chance on real images (real AUC "
                       f"{ref.get('auc')}, CI [{ref.get('ci_low')}, {ref.get('ci_high')}] on {ref.get('test_set')}); "
                       "its generated AUC is shown for information only")
        elif r["status"] == NO_REFERENCE:
            out.append(f"{f}: not scored — the classifier has no real held-out AUC for it on the chosen reference")
        elif r["status"] == NO_PAIR and (r["n_present"] or r["n_absent"]):
            out.append(f"{f}: not scored — needs ≥ {min_group} images asked present and ≥ {min_group} asked "
                       "absent "
                       f"(batch: {r['n_present']} present, {r['n_absent']} absent)")
    return out


def headline(rows: dict[str, dict], n: int) -> dict[str, Any]:
    usable = [r for r in rows.values() if r["usable"]]
    ratios = [r["ratio"] for r in usable]
    flagged = [f for f, r in rows.items() if not r["usable"] and (r["n_present"] or r["n_absent"])]
    return {"mean_ratio": float(np.mean(ratios)) if ratios else None,
            "min_ratio": float(np.min(ratios)) if ratios else None,
            "mean_generated_auc": float(np.mean([r["generated"]["auc"] for r in usable])) if usable else None,
            "mean_real_auc": float(np.mean([r["real"]["auc"] for r in usable])) if usable else None,
            "usable_findings": len(usable), "flagged": ", ".join(flagged) or None, "n_images": int(n),
            "refused": not usable}


def references(clf, reference: str) -> dict[str, dict | None]:
    """``finding → card entry`` (with its ``test_set``) for the option ``reference``."""
    if reference != "auto" and reference not in clf.card:
        raise MetricsError(f"conditioning option reference: unknown test set {reference!r}; choose from auto, "
                           + ", ".join(clf.card))
    out = {}
    for f in FINDINGS:
        name = clf.reference.get(f) if reference == "auto" else reference
        entry = clf.real_auc(f, name)
        out[f] = None if entry is None else {**entry, "test_set": name}
    return out


def _fmt_ci(lo, hi) -> str:
    return "n/a" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"


def table(rows: dict[str, dict], ci_level: float) -> Table:
    body = []
    for f, r in rows.items():
        g, ref = r["generated"], r["real"] or {}
        body.append([f, r["n_present"], r["n_absent"], r["mean_p_present"], r["mean_p_absent"], g["auc"],
                     _fmt_ci(g["ci_low"], g["ci_high"]), ref.get("auc"), _fmt_ci(ref.get("ci_low"), ref.get("ci_high")),
                     r["ratio"], r["status"]])
    return Table(title="Conditional agreement per finding (independent classifier)",
                 columns=["finding", "asked present", "asked absent", "mean p (present)", "mean p (absent)",
                          "generated AUC", f"{int(round(ci_level * 100))} % CI", "real AUC", "real CI", "ratio",
                          "status"], rows=body,
                 note="generated AUC: the classifier's probability separating images asked 'present' from those "
                      "asked 'absent'; real AUC: the same classifier on real held-out images (its card); ratio = "
                      "generated / real, only where the real CI lies above 0.5.")


def figure(rows: dict[str, dict]) -> Figure | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fs = list(rows)
    x = np.arange(len(fs))
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for k, (key, label, dx) in enumerate((("generated", "generated", -0.18), ("real", "real held-out", 0.18))):
        vals = [(rows[f][key] or {}).get("auc") for f in fs]
        lo = [(rows[f][key] or {}).get("ci_low") for f in fs]
        hi = [(rows[f][key] or {}).get("ci_high") for f in fs]
        v = np.array([np.nan if a is None else a for a in vals])
        err = np.array([[0 if a is None or b is None else a - b for a, b in zip(vals, lo)],
                        [0 if a is None or c is None else c - a for a, c in zip(vals, hi)]])
        ax.bar(x + dx, v, 0.36, yerr=err, capsize=3, label=label, color=("C0", "C7")[k])
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [f.replace("_", " ") for f in fs], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUC")
    ax.legend(fontsize=8)
    return Figure.from_matplotlib(fig, "Generated vs real AUC per finding",
                                  "bars: AUC with CI; dashed: chance. Grey = the classifier on real held-out images.")


def image_details(probs: np.ndarray, codes: np.ndarray, seeds: list[int], thresholds: dict) -> list[dict]:
    out = []
    for i in range(len(probs)):
        req = {f: ("present" if codes[i, j] == 1 else "absent") for j, f in enumerate(FINDINGS) if codes[i, j] != 2}
        p = {f: round(float(probs[i, FINDINGS.index(f)]), 4) for f in req}
        agrees = {f: bool((p[f] > thresholds[f]) == (s == "present")) for f, s in req.items()}
        out.append({"index": i, "seed": int(seeds[i]) if i < len(seeds) else None, "requested": req, "p": p,
                    "agrees": agrees})
    return out


def run(synthetic: SyntheticSet, options: ConditioningOptions, progress: ProgressFn) -> EvaluationResult:
    from services.metrics.evaluation.classifier import load_classifier

    steps = Steps(3, progress)
    clf = load_classifier()
    refs = references(clf, options.reference)
    steps.step("classifier loaded")
    if synthetic.n == 0:
        raise MetricsError("the batch holds no images")
    probs = clf.predict(synthetic.images)
    steps.step("images classified")
    rows = per_finding(probs, synthetic.codes, clf.thresholds, refs, options)
    warnings = warnings_of(rows, options.min_group)
    head = headline(rows, synthetic.n)
    if head["refused"]:
        warnings.insert(0, "no finding could be scored: no ratio is reported")
    details: dict[str, Any] = {"findings": rows}
    if options.per_image:
        details["per_image"] = image_details(probs, synthetic.codes, synthetic.seeds, clf.thresholds)
    figs = [f for f in ([figure(rows)] if options.figure else []) if f is not None]
    used = sorted({r["test_set"] for r in refs.values() if r})
    prov = Provenance(classifier=clf.provenance(), seeds=[options.seed],
                      set_sizes={"synthetic": synthetic.n,
                                 **{f"real_test:{s}": int(clf.meta["heldout"][s]["n"]) for s in used}},
                      data={"real_reference": {f: (r or {}).get("test_set") for f, r in refs.items()},
                            "split_rule": clf.meta.get("split_rule")},
                      options=options.model_dump(mode="json"))
    steps.step("scored")
    return EvaluationResult(kind="conditioning",
                            subject=Subject(description=synthetic.description, batch_id=synthetic.batch_id,
                                            model_id=synthetic.model_id, model_hash=synthetic.model_hash,
                                            n=synthetic.n),
                            provenance=prov, headline=head, tables=[table(rows, options.ci_level)], figures=figs,
                            warnings=warnings, details=details)


register_evaluation(Evaluation(kind="conditioning", options=ConditioningOptions, run=run,
                               summary="does each image show the finding it was asked for? generated vs real AUC "
                                       "of the shipped independent classifier, per finding", needs_data=False))
