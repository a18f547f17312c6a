"""Conditional agreement of a generator: does it draw the findings it is conditioned on?

Scored with the shipped **independent** classifier (``services/metrics/evaluation/classifier/``: ResNet-18
trained on real labelled NIH + Kermany images only, weights sha256-checked; no classifier is trained here). For
each finding ``f`` the generator makes ``n`` images conditioned "f present" and ``n`` conditioned "f absent" (other
findings unspecified); the evaluation kind ``conditioning`` (``services/metrics/evaluation/conditioning.py``)
reports per finding

* ``generated``: ROC-AUC (bootstrap CI) of the classifier's probability for ``f`` separating the two groups, the
  accuracy at the classifier's threshold (groups are balanced: = balanced accuracy) and the mean probabilities;
* ``real_heldout``: the same classifier on real held-out images — the patient-disjoint ``test`` split of ``data``
  when given (for NIH and Kermany that is exactly the classifier's own held-out split), else its card;
* ``ratio`` = generated / real AUC, ``None`` (flagged, ``status``) where the classifier is no better than chance
  on the real images or a group is missing.

Reusable for any family: :func:`evaluate_conditioning` takes any generator with the ``LoadedGenerator``
interface (``generate(conditions, seeds, params)``); this module never imports the generator package. From the
command line (it loads a registered model):

    synthrad models evaluate stylegan2-cxr64 --data ../shared/data/nih-chestxray14-64 --json out.json
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from services.common.findings import FINDINGS, Condition
from services.common.logging import get_logger

log = get_logger(__name__)


def _real_references(clf, data: str, layout: str, views, cache_dir, replicates: int) -> tuple[dict, int, str]:
    """The classifier's metrics on ``data``'s patient-disjoint test split (card format + ``test_set``)."""
    from services.metrics.evaluation.inputs import DataSpec, load_real

    spec = DataSpec(path=str(data), layout=layout, views=list(views) if views else None, split_by="patient")
    real = load_real(spec, clf.resolution, splits=("test",), cache_dir=cache_dir or "auto")
    metrics = clf.score_real(real.test_images, real.test_codes, replicates or 200)  # usability needs a CI
    name = f"{spec.display} (patient test split)"
    refs = {f: ({**metrics[f], "test_set": name} if f in metrics else None) for f in FINDINGS}
    return refs, len(real.test_images), name


def evaluate_conditioning(generator, data: str | None = None, layout: str = "nih",
                          views: Sequence[str] | None = ("PA", "AP"), n_per_condition: int = 200, device: str = "cpu",
                          seed: int = 0, params=None, classifier=None, epochs: int | None = None, cache_dir=None,
                          seed_offset: int = 1_000_000, split_by: str = "patient", bootstrap: int = 1000,
                          reference: str = "auto") -> dict:
    """Per-finding agreement of ``generator`` (a LoadedGenerator) with its conditions, scored by the shipped
    independent classifier (``classifier``: a :class:`CXRClassifier`, default the shipped one), next to the same
    classifier on real held-out images: ``data``'s patient ``test`` split when given, else the card's
    ``reference`` test set. ``epochs`` is ignored (nothing is trained any more); ``split_by="recorded"`` is not
    honoured for the real reference (the recorded NIH valid split shares patients with the classifier's
    training split), which always uses the patient ``test`` split. ``bootstrap``: replicates of the AUC CIs (0: no
    CI for the generated AUCs; the real reference on ``data`` then gets 200, its CI decides usability). Returns a
    JSON-able dict."""
    from services.metrics.evaluation.classifier import load_classifier
    from services.metrics.evaluation.conditioning import ConditioningOptions, per_finding, references

    t0 = time.time()
    if epochs is not None:
        log.info("evaluate_conditioning: epochs is ignored (the shipped classifier is used)", extra={"epochs": epochs})
    if split_by != "patient":
        log.warning("the real reference uses the patient test split (independent of the classifier's training)",
                    extra={"split_by": split_by})
    clf = classifier or load_classifier()
    opts = ConditioningOptions(bootstrap=bootstrap, seed=seed, reference=reference, per_image=False, figure=False)
    if data is not None:
        refs, n_real, ref_name = _real_references(clf, data, layout, views, cache_dir, bootstrap)
    else:
        refs = references(clf, reference)
        used = sorted({r["test_set"] for r in refs.values() if r})
        n_real, ref_name = sum(int(clf.meta["heldout"][s]["n"]) for s in used), ", ".join(used)
    images, codes = [], []
    for j, f in enumerate(FINDINGS):
        base = seed_offset + j * 10 * n_per_condition
        seeds = [base + i for i in range(2 * n_per_condition)]
        conds = [Condition.from_findings(present=[f])] * n_per_condition + \
                [Condition.from_findings(absent=[f])] * n_per_condition
        imgs = np.asarray(generator.generate(conds, seeds, params), dtype=np.float32)
        images.append(imgs if imgs.ndim == 3 else imgs.reshape(imgs.shape[0], *imgs.shape[-2:]))
        c = np.full((2 * n_per_condition, len(FINDINGS)), 2, np.int8)
        c[:n_per_condition, j], c[n_per_condition:, j] = 1, 0
        codes.append(c)
    probs = np.concatenate([clf.predict(x) for x in images])
    rows = per_finding(probs, np.concatenate(codes), clf.thresholds, refs, opts)
    out = {"data": str(data) if data is not None else None, "layout": layout if data is not None else None,
           "views": list(views) if views else None, "split_by": "patient", "heldout_split": "test",
           "real_reference": ref_name, "n_valid": int(n_real), "n_per_condition": n_per_condition,
           "model_id": getattr(generator, "model_id", None), "backend": getattr(generator, "backend", None),
           "classifier": clf.provenance(), "findings": {}}
    for f, r in rows.items():
        ref = r["real"] or {}
        out["findings"][f] = {
            "threshold": r["threshold"],
            "real_heldout": {k: ref.get(k) for k in ("auc", "ci_low", "ci_high", "balanced_accuracy", "n_pos", "n_neg",
                                                     "test_set")},
            "generated": {"auc": r["generated"]["auc"], "ci_low": r["generated"]["ci_low"],
                          "ci_high": r["generated"]["ci_high"], "accuracy": r["balanced_accuracy"],
                          "mean_prob_present": r["mean_p_present"], "mean_prob_absent": r["mean_p_absent"]},
            "ratio": r["ratio"], "status": r["status"]}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def format_table(res: dict) -> str:
    """Markdown table of an :func:`evaluate_conditioning` result (older results without ``ratio`` render too)."""
    with_ratio = any("ratio" in r for r in res["findings"].values())
    lines = [f"Conditional agreement — {res.get('model_id')} ({res['n_per_condition']} images per condition; "
             f"real held-out n={res['n_valid']})", "",
             "| finding | real AUC | real bal. acc. | generated AUC | generated acc. | p(present) / p(absent) |"
             + (" ratio |" if with_ratio else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if with_ratio else "")]

    def f2(v):
        return "n/a" if v is None else f"{v:.3f}"

    def p2(v):
        return "n/a" if v is None else f"{v:.2f}"

    for f, r in res["findings"].items():
        g, rl = r["generated"], r["real_heldout"]
        row = (f"| {f} | {f2(rl.get('auc'))} | {f2(rl.get('balanced_accuracy'))} | {f2(g['auc'])} | "
               f"{f2(g['accuracy'])} | {p2(g['mean_prob_present'])} / {p2(g['mean_prob_absent'])} |")
        if with_ratio:
            row += f" {f2(r.get('ratio'))} |" if r.get("ratio") is not None else f" n/a ({r.get('status', '')}) |"
        lines.append(row)
    if with_ratio:
        lines += ["", "Scored by the shipped independent classifier "
                  f"({(res.get('classifier') or {}).get('arch', '?')}, sha256 "
                  f"{str((res.get('classifier') or {}).get('weights_sha256', '?'))[:12]}…); real reference: "
                  f"{res.get('real_reference', 'n/a')}. ratio = generated / real AUC, n/a where the classifier is "
                  "no better than chance on real images or a group is missing."]
    return "\n".join(lines)
