"""Utility: does training on a synthetic batch help a classifier of real chest X-rays?

Three protocols (the published fidelity-vs-utility protocol on Kermany), each over ``seeds`` paired runs — one
seed fixes the real training subset, the initial weights and the shuffles of every classifier of that run — and
compared with the paired Wilcoxon signed-rank test, the mean difference and its t interval:

* ``augmentation``: trained on real + synthetic (``ratio`` × the real count, drawn per seed) minus real only.
  Same epochs over each training set, so the real images are seen equally often in both arms.
* ``tstr`` (train on synthetic, test on real): trained on synthetic only (as many images as the real subset, or
  all there are) minus real only.
* ``feature_extraction``: backbone pretrained on synthetic only vs on real only (the two classifiers above), each
  frozen with a fresh linear head fitted on the same 50 % of the seed's real training subset.

Tasks: ``pneumonia`` (Kermany-like normal vs pneumonia; accuracy) or ``findings`` (multi-label; mean ROC-AUC over
the findings with both states in the real test split). Scores are always on the real, patient-disjoint test
split. The classifier is torchvision's ``mobilenet_v3_small`` (Howard et al. 2019; ``networks.py``), trained
from scratch, by default: at 64 px a chest X-ray carries whole-lung patterns (opacity, effusion, heart size), not
fine texture, so a 1.5 M-parameter network suits a few hundred training images better than ResNet-18's 11 M; its
last stage sees 2×2 like ResNet-18's; and it trains ~5× faster on a CPU core (143 vs 27 images/s here, batch 64)
— utility trains 4 classifiers per seed, and that speed is what lets 6 seeds fit in 20 minutes on 2 cores.
``resnet18`` is the alternative (the independent classifier's network).
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from services.common.findings import FINDINGS
from services.metrics.errors import MetricsError
from services.metrics.evaluation.inputs import DataSpec, RealData, SyntheticSet, crop_border, load_real, resize
from services.metrics.evaluation.progress import ProgressFn, Steps
from services.metrics.evaluation.registry import Evaluation, register_evaluation
from services.metrics.evaluation.result import EvaluationResult, Figure, Provenance, Subject, Table
from services.metrics.evaluation.stats import min_wilcoxon_p, paired_comparison

PROTOCOLS = ("augmentation", "tstr", "feature_extraction")
FE_FRACTION = 0.5  # feature extraction: the share of the seed's real subset the head is fitted on


class UtilityOptions(BaseModel):
    data: DataSpec = Field(description="the real labelled dataset (train split: real training images; test split: "
                                       "where every classifier is scored)")
    task: Literal["auto", "pneumonia", "findings"] = Field(
        "auto", description="auto (pneumonia when the data is Kermany-like normal/pneumonia, else findings) | "
                            "pneumonia (normal vs pneumonia accuracy) | findings (multi-label mean ROC-AUC)")
    ratios: list[float] = Field([0.5, 1.0], min_length=1, description="augmentation synthetic:real ratios "
                                                                      "(synthetic images added per real image)")
    seeds: int = Field(6, ge=2, le=100, description="paired runs per comparison (6 or more: with 5 pairs the "
                                                    "smallest two-sided Wilcoxon p is 0.0625)")
    seed: int = Field(0, ge=0, description="first seed; run i uses seed + i")
    protocols: list[Literal["augmentation", "tstr", "feature_extraction"]] = Field(
        list(PROTOCOLS), min_length=1, description="which protocols to run: augmentation, tstr, feature_extraction")
    arch: Literal["mobilenet_v3_small", "resnet18"] = Field(
        "mobilenet_v3_small", description="classifier architecture (torchvision, trained from scratch)")
    resolution: int = Field(64, ge=32, le=256, description="side in px every image is resized to for training")
    real_train: int | None = Field(500, ge=20, description="cap on real training images, drawn per seed "
                                                            "(None: the whole train split)")
    epochs: int = Field(8, ge=1, le=500, description="epochs over each classifier's training set")
    batch: int = Field(64, ge=2, le=4096, description="training batch size")
    crop_border: float = Field(0.0, ge=0.0, lt=0.5, description="fraction cut from every edge of real and synthetic "
                                                                "images before training (the burned-in marker control)")
    threads: int = Field(1, ge=0, le=256, description="torch CPU threads while training (0: torch's default). "
                                                      "1 by default: a 64 px MobileNet gains little from more, and "
                                                      "loses up to 6x when another process shares the cores")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if any(not (0 < r <= 20) for r in v):
            raise ValueError("every ratio must be in (0, 20]")
        if len(set(v)) != len(v):
            raise ValueError("ratios must be distinct")
        return sorted(v)

    @field_validator("protocols")
    @classmethod
    def _protocols(cls, v: list[str]) -> list[str]:
        return [p for p in PROTOCOLS if p in v]


# ---- inputs ------------------------------------------------------------------------------------------------
def _resolve_task(options: UtilityOptions, real: RealData) -> str:
    if options.task != "auto":
        return options.task
    return "pneumonia" if real.is_binary_pneumonia else "findings"


def _prepare(images: np.ndarray, resolution: int, border: float) -> np.ndarray:
    return crop_border(resize(images, resolution), border) if len(images) else images


def _labelled(images, codes, task):
    from services.metrics.evaluation.utility_training import task_labels

    keep, y, m = task_labels(codes, task)
    return images[keep], y, m, int((~keep).sum())


def _subsample(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return np.sort(rng.permutation(n)[:k]) if k < n else np.arange(n)


# ---- run ---------------------------------------------------------------------------------------------------
def run(synthetic: SyntheticSet, options: UtilityOptions, progress: ProgressFn) -> EvaluationResult:
    import torch

    from services.metrics.evaluation import utility_training as ut

    t_start = time.perf_counter()
    old_threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    threads = torch.get_num_threads()
    warnings: list[str] = []
    protos = list(options.protocols)
    ratios = list(options.ratios) if "augmentation" in protos else []
    need_syn_only = "tstr" in protos or "feature_extraction" in protos
    per_seed = 1 + len(ratios) + (1 if need_syn_only else 0) + (2 if "feature_extraction" in protos else 0)
    steps = Steps(1 + options.seeds * per_seed, progress)
    seeds = [options.seed + i for i in range(options.seeds)]
    recipe = ut.Recipe(options.arch, options.epochs, options.batch)
    try:
        real = load_real(options.data, options.resolution)
        task = _resolve_task(options, real)
        r_train, ry, rm, r_drop = _labelled(_prepare(real.train_images, options.resolution, options.crop_border),
                                            real.train_codes, task)
        r_test, ty, tm, t_drop = _labelled(_prepare(real.test_images, options.resolution, options.crop_border),
                                           real.test_codes, task)
        if r_drop or t_drop:
            warnings.append(f"{r_drop + t_drop} real images have no usable {task} label and were left out "
                            f"(train {r_drop}, test {t_drop})")
        if synthetic.n == 0:
            raise MetricsError("the synthetic set is empty")
        s_imgs, sy, sm, s_drop = _labelled(_prepare(synthetic.images, options.resolution, options.crop_border),
                                           synthetic.codes, task)
        if s_drop:
            why = ("neither pneumonia (lung_opacity present) nor normal (every finding absent)" if task == "pneumonia"
                   else "every finding unspecified")
            warnings.append(f"{s_drop} of {synthetic.n} synthetic images dropped: their condition is {why}")
        if len(s_imgs) < 2:
            raise MetricsError(f"only {len(s_imgs)} synthetic images have a usable {task} label; utility needs more")
        evaluated = _evaluated(task, ty, tm)
        if task == "pneumonia" and len(np.unique(ty)) < 2:
            raise MetricsError(f"the real test split of {options.data.display!r} holds one class only")
        if task == "findings" and not evaluated:
            raise MetricsError(f"no finding has both states in the real test split of {options.data.display!r}")
        if synthetic.images.shape[-1] != options.resolution:
            warnings.append(f"synthetic images resized from {synthetic.images.shape[-1]} to {options.resolution} px")
        if options.seeds < 6:
            warnings.append(f"with {options.seeds} seeds the smallest two-sided Wilcoxon p is "
                            f"{min_wilcoxon_p(options.seeds):.4g}: p < 0.05 cannot be reached (use 6 or more)")
        n_real = len(r_train) if options.real_train is None else min(options.real_train, len(r_train))
        steps.step("data loaded")

        runs: dict[str, list[float]] = {"real": []}
        per_finding: dict[str, list[dict[str, float]]] = {"real": []}
        used: dict[str, int] = {}
        short: set[float] = set()
        one_class: list[int] = []
        for s in seeds:
            rng = np.random.default_rng([s, 1])
            ri = _subsample(rng, len(r_train), n_real)
            x_r, y_r, m_r = r_train[ri], ry[ri], rm[ri]
            if task == "pneumonia" and len(np.unique(y_r)) < 2:
                raise MetricsError(f"seed {s}: the real training subset holds one class only; raise real_train")

            def fit_score(key: str, x, y, m, stage: str):
                model = ut.train_classifier(x, y, m, recipe, s)
                value, per = ut.score(ut.predict(model, r_test), ty, tm, task, evaluated)
                runs.setdefault(key, []).append(value)
                per_finding.setdefault(key, []).append(per)
                steps.step(f"seed {s}: {stage}")
                return model

            real_model = fit_score("real", x_r, y_r, m_r, "real only")
            for ratio in ratios:
                k = int(round(ratio * n_real))
                if k > len(s_imgs):
                    short.add(ratio)
                si = np.random.default_rng([s, 2, int(ratio * 1000)]).permutation(len(s_imgs))[:k]
                used[f"synthetic_added_x{ratio:g}"] = len(si)
                fit_score(f"augmentation_x{ratio:g}", np.concatenate([x_r, s_imgs[si]]), np.concatenate([y_r, sy[si]]),
                          np.concatenate([m_r, sm[si]]), f"real + synthetic x{ratio:g}")
            if need_syn_only:
                si = _subsample(np.random.default_rng([s, 3]), len(s_imgs), n_real)
                used["synthetic_only_train"] = len(si)
                if task == "pneumonia" and len(np.unique(sy[si])) < 2:
                    one_class.append(s)
                syn_model = fit_score("tstr", s_imgs[si], sy[si], sm[si], "synthetic only")
            if "feature_extraction" in protos:
                n_head = max(2, int(round(FE_FRACTION * n_real)))
                hi = np.sort(np.random.default_rng([s, 4]).permutation(n_real)[:n_head])
                used["real_head_fit"] = len(hi)
                for key, model, stage in (("fe_real", real_model, "head on real-pretrained"),
                                          ("fe_synthetic", syn_model, "head on synthetic-pretrained")):
                    ut.fit_head(model, x_r[hi], y_r[hi], m_r[hi], recipe)
                    value, per = ut.score(ut.predict(model, r_test), ty, tm, task, evaluated)
                    runs.setdefault(key, []).append(value)
                    per_finding.setdefault(key, []).append(per)
                    steps.step(f"seed {s}: {stage}")
        for ratio in sorted(short):
            warnings.append(f"ratio {ratio:g} asks for {int(round(ratio * n_real))} synthetic images; only "
                            f"{len(s_imgs)} are usable, so all were added (effective ratio "
                            f"{len(s_imgs) / n_real:.2f})")
        if used.get("synthetic_only_train", n_real) < n_real:
            warnings.append(f"the synthetic-only classifiers trained on {used['synthetic_only_train']} images, the "
                            f"real-only ones on {n_real} (the synthetic set is smaller)")
        if one_class:
            warnings.append(f"the synthetic-only training set holds one class only (seeds {one_class}): its classifier "
                            "can only predict that class")
    finally:
        torch.set_num_threads(old_threads)

    metric = "accuracy" if task == "pneumonia" else "mean ROC-AUC"
    comparisons = _comparisons(runs, protos, ratios)
    result = EvaluationResult(
        kind="utility",
        subject=Subject(description=synthetic.description, batch_id=synthetic.batch_id, model_id=synthetic.model_id,
                        model_hash=synthetic.model_hash, n=synthetic.n),
        provenance=Provenance(
            classifier={**recipe.to_dict(), "trained": "per seed, from scratch (no pretrained weights)",
                        "num_outputs": 1 if task == "pneumonia" else len(FINDINGS), "threads": threads,
                        "feature_extraction_head_fraction": FE_FRACTION},
            seeds=seeds,
            set_sizes={"real_train": n_real, "real_train_available": int(len(r_train)), "real_test": int(len(r_test)),
                       "synthetic": synthetic.n, "synthetic_usable": int(len(s_imgs)), **used},
            data={"dataset": options.data.display, "path": options.data.path, "layout": options.data.layout,
                  "split_by": options.data.split_by, "resolution": options.resolution,
                  "crop_border": options.crop_border, "task": task, "metric": metric,
                  "evaluated_findings": [FINDINGS[j] for j in evaluated] if task == "findings" else ["pneumonia"],
                  "labels": ("pneumonia = lung_opacity present, normal = every finding absent" if task == "pneumonia"
                             else "per finding; unspecified (code 2) masked out of the loss and the AUC")},
        ),
        headline=_headline(task, metric, runs, comparisons),
        tables=_tables(metric, runs, comparisons, seeds, protos, ratios),
        figures=[_figure(metric, runs, protos, ratios, seeds)],
        warnings=warnings,
        details={"task": task, "metric": metric, "per_seed": runs,
                 "comparisons": {k: v.to_dict() for k, v in comparisons.items()},
                 **({"per_finding": per_finding} if task == "findings" else {})},
    )
    result.seconds = round(time.perf_counter() - t_start, 2)
    return result


def _evaluated(task: str, ty: np.ndarray, tm: np.ndarray) -> list[int]:
    if task == "pneumonia":
        return [0]
    out = []
    for j in range(ty.shape[1]):
        y = ty[tm[:, j] > 0, j]
        if (y == 1).any() and (y == 0).any():
            out.append(j)
    return out


# ---- report ------------------------------------------------------------------------------------------------
def _pairs(protos: list[str], ratios: list[float]) -> list[tuple[str, str, str, str]]:
    """(comparison key, protocol, setting, treatment runs key, baseline runs key)."""
    out = [(f"augmentation_x{r:g}", "augmentation", f"synthetic:real {r:g}", f"augmentation_x{r:g}", "real")
           for r in ratios]
    if "tstr" in protos:
        out.append(("tstr", "tstr", "synthetic only", "tstr", "real"))
    if "feature_extraction" in protos:
        out.append(("feature_extraction", "feature_extraction", f"head on {FE_FRACTION:.0%} real",
                    "fe_synthetic", "fe_real"))
    return out


def _comparisons(runs, protos, ratios):
    return {key: paired_comparison(runs[t], runs[b]) for key, _, _, t, b in _pairs(protos, ratios)}


def _headline(task, metric, runs, comparisons) -> dict:
    h: dict = {"task": task, "metric": metric, "real_only": float(np.mean(runs["real"]))}
    for key, c in comparisons.items():
        h[f"{key}_delta"] = c.mean_diff
        h[f"{key}_p"] = c.p_value
    return h


def _tables(metric, runs, comparisons, seeds, protos, ratios) -> list[Table]:
    baseline_name = {"real": "real only", "fe_real": "real-pretrained"}
    rows = []
    for key, proto, setting, t, b in _pairs(protos, ratios):
        c = comparisons[key]
        rows.append([proto, setting, baseline_name[b], float(np.mean(runs[b])), float(np.std(runs[b], ddof=1)),
                     float(np.mean(runs[t])), float(np.std(runs[t], ddof=1)), c.mean_diff, c.ci_low, c.ci_high,
                     c.p_value, c.significant, c.n])
    main = Table(title=f"Utility ({metric} on the real test split; treatment − baseline, paired over seeds)",
                 columns=["protocol", "setting", "baseline", "baseline mean", "baseline sd", "treatment mean",
                          "treatment sd", "mean Δ", "CI low", "CI high", "Wilcoxon p", "p < 0.05", "seeds"],
                 rows=rows, note="CI: 95 % t interval of the paired differences; p: two-sided Wilcoxon signed-rank "
                                 f"(smallest reachable with {len(seeds)} seeds: {min_wilcoxon_p(len(seeds)):.3g}).")
    keys = list(runs)
    per = Table(title=f"Per-seed {metric}", columns=["seed"] + [_label(k) for k in keys],
                rows=[[s] + [runs[k][i] for k in keys] for i, s in enumerate(seeds)])
    return [main, per]


def _label(key: str) -> str:
    return {"real": "real only", "tstr": "synthetic only", "fe_real": "FE real-pretrained",
            "fe_synthetic": "FE synthetic-pretrained"}.get(key, key.replace("augmentation_x", "real + synthetic x"))


def _figure(metric, runs, protos, ratios, seeds) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if ratios:
        panels.append(("augmentation", ["real"] + [f"augmentation_x{r:g}" for r in ratios]))
    if "tstr" in protos:
        panels.append(("train on synthetic, test on real", ["real", "tstr"]))
    if "feature_extraction" in protos:
        panels.append(("feature extraction", ["fe_real", "fe_synthetic"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False, sharey=True)
    for ax, (title, keys) in zip(axes[0], panels):
        xs = np.arange(len(keys))
        for i, s in enumerate(seeds):
            ax.plot(xs, [runs[k][i] for k in keys], "o-", color="0.6", alpha=0.7, lw=1, ms=3)
        ax.plot(xs, [np.mean(runs[k]) for k in keys], "s-", color="C3", lw=2, ms=6, label="mean")
        ax.set_xticks(xs, [_label(k).replace("real + synthetic ", "+syn ").replace("FE ", "") for k in keys],
                      rotation=20, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][0].legend(fontsize=8)
    return Figure.from_matplotlib(fig, title=f"Per-seed {metric} per protocol",
                                  caption=f"grey: one seed ({len(seeds)} paired runs), red: the mean")


register_evaluation(Evaluation(
    kind="utility", options=UtilityOptions, run=run, needs_data=True,
    summary="augmentation (synthetic:real ratios), train-on-synthetic-test-on-real and feature-extraction utility "
            "of a batch for a real classifier, paired over seeds (Wilcoxon, mean Δ, CI)"))
