"""Per-finding fidelity: FID / KID / precision / recall of each (finding, state) group of a batch's conditions.

A batch's images carry the condition each was asked for; the real side is a labelled dataset's held-out split.
For every finding and state (present / absent) the synthetic images asked for it are compared with the real
images that have it, with the registry's own measures (``services/metrics/measures``: the same code as
``synthrad score``) on features of one extractor — so "FID" appears only for the ``inception`` extractor
(``naming.py``). Groups smaller than ``min_group`` on either side are listed with their sizes and no values.

Small groups bias FID upwards (it falls with n; rank-deficient covariance below 2,048 images): compare groups only
at similar sizes, and prefer KID (unbiased) — the table gives both set sizes on every row.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from services.common.findings import FINDINGS
from services.metrics import defaults
from services.metrics.evaluation.features import extract_features
from services.metrics.evaluation.inputs import DataSpec, SyntheticSet, load_real
from services.metrics.evaluation.progress import ProgressFn, Steps
from services.metrics.evaluation.registry import Evaluation, register_evaluation
from services.metrics.evaluation.result import EvaluationResult, Provenance, Subject, Table

MEASURES = ("fid", "kid", "ipr")
STATES = {"present": 1, "absent": 0}


class PerFindingOptions(BaseModel):
    data: DataSpec = Field(description="labelled real dataset; its held-out split is the real side")
    split: str = Field("test", description="real split compared against: test (held out) or train")
    extractor: str = Field(defaults.EXTRACTOR, description="feature extractor (FID / KID only for inception)")
    min_group: int = Field(10, ge=2, description="smallest group (real and synthetic) that is scored")
    seed: int = Field(defaults.SEED, description="seed of KID subsets")
    bootstrap: int = Field(0, ge=0, le=1000, description="bootstrap replicates for CIs (0 = none)")


def _group_scores(real: np.ndarray, syn: np.ndarray, stamp, extractor: str, opts: PerFindingOptions,
                  warnings: list[str]) -> dict[str, float | None]:
    from services.metrics.registry import MeasureInput, get_measure
    from services.metrics.sets import features_set

    rd = features_set(real, "real group", extractor, stamp)
    sd = features_set(syn, "synthetic group", extractor, stamp)
    out: dict[str, float | None] = {}
    for name in MEASURES:
        m = get_measure(name)
        inp = MeasureInput(real=rd, synthetic=sd, extractor=extractor, options=dict(m.options), seed=opts.seed,
                           ci_level=defaults.CI_LEVEL, bootstrap=opts.bootstrap, warnings=warnings)
        for s in m.compute(inp).scores:
            out[s.name] = s.value
    return out


def run(synthetic: SyntheticSet, options: PerFindingOptions, progress: ProgressFn) -> EvaluationResult:
    res = synthetic.images.shape[-1]
    real = load_real(options.data, res, splits=(options.split,))
    r_img = real.test_images if options.split == "test" else real.train_images
    r_codes = real.test_codes if options.split == "test" else real.train_codes
    steps = Steps(2 + 1 + 2 * len(FINDINGS), progress)
    f_real, stamp = extract_features(r_img, options.extractor, label="real")
    steps.step(f"{options.extractor} features: real")
    f_syn, _ = extract_features(synthetic.images, options.extractor, label="synthetic")
    steps.step(f"{options.extractor} features: synthetic")
    warnings: list[str] = []
    names: list[str] = []
    rows: list[list] = []
    groups: list[dict] = []

    def add(finding: str, state: str, rm: np.ndarray, sm: np.ndarray) -> None:
        nr, ns = int(rm.sum()), int(sm.sum())
        vals: dict[str, float | None] = {}
        if min(nr, ns) >= options.min_group:
            # sample-size warnings of the "all" row stand for every group (one note below covers the rest)
            vals = _group_scores(f_real[rm], f_syn[sm], stamp, options.extractor, options,
                                 warnings if finding == "all" else [])
            for k in vals:
                if k not in names:
                    names.append(k)
        groups.append({"finding": finding, "state": state, "n_real": nr, "n_synthetic": ns, "scores": vals})
        steps.step(f"{finding} {state}")

    add("all", "-", np.ones(len(f_real), bool), np.ones(len(f_syn), bool))
    for j, f in enumerate(FINDINGS):
        for state, code in STATES.items():
            add(f, state, r_codes[:, j] == code, synthetic.codes[:, j] == code)
    for g in groups:
        rows.append([g["finding"], g["state"], g["n_real"], g["n_synthetic"]] + [g["scores"].get(k) for k in names])
    skipped = [f"{g['finding']} {g['state']}" for g in groups if not g["scores"]]
    if skipped:
        warnings.append(f"not scored (fewer than {options.min_group} real or synthetic images): {', '.join(skipped)}")
    warnings.append("FID of small groups is biased upwards and falls with n: compare rows of similar sizes, "
                    "prefer KID")
    split_name = "valid" if (options.split == "test" and real.spec.split_by == "recorded") else options.split
    table = Table(title=f"Per-finding fidelity ({options.extractor} features; real: {real.spec.display} "
                        f"{split_name} split)",
                  columns=["finding", "state", "n real", "n synthetic"] + names, rows=rows,
                  note="Synthetic groups by the requested condition; real groups by the dataset's labels.")
    all_scores = groups[0]["scores"]
    headline = {f"{k} (all)": v for k, v in all_scores.items()}
    scored = [g for g in groups[1:] if g["scores"]]
    fid_key = next((k for k in names if k.upper().startswith(("FID", "FD_"))), None)
    if fid_key and scored:
        worst = max(scored, key=lambda g: g["scores"].get(fid_key) or -1)
        headline[f"worst group by {fid_key}"] = f"{worst['finding']} {worst['state']}"
    return EvaluationResult(
        kind="per-finding",
        subject=Subject(description=synthetic.description, batch_id=synthetic.batch_id, model_id=synthetic.model_id,
                        model_hash=synthetic.model_hash, n=synthetic.n),
        provenance=Provenance(extractors={options.extractor: stamp.weights_sha256 or ""}, seeds=[options.seed],
                              set_sizes={"real": len(f_real), "synthetic": len(f_syn)},
                              data={"dataset": real.spec.display, "split": split_name,
                                    "split_by": real.spec.split_by}),
        headline=headline, tables=[table], warnings=list(dict.fromkeys(warnings)), details={"groups": groups})


register_evaluation(Evaluation(kind="per-finding", options=PerFindingOptions, run=run, needs_data=True,
                               summary="FID / KID / precision / recall per finding and state of the batch's conditions"))
