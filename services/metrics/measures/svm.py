"""Separability of real vs synthetic images from interpretable features: SVMs (linear and RBF) with grid
search, trained on 10 % of the data and validated on the other 90 % (stratified), F1 of the synthetic class.

An F1 near 0.5–0.67 (chance, depending on class balance) means the spatial statistics do not tell the sets
apart; near 1 they do. Reference point from the literature: 0.71 for DDPM chest X-rays (Fan et al.).
"""

from __future__ import annotations

import numpy as np

from services.metrics import defaults
from services.metrics.errors import MetricsError
from services.metrics.registry import SPATIAL, Measure, MeasureInput, Outcome, register_measure
from services.metrics.result import Score

LITERATURE_F1_DDPM_CXR = 0.71


def svm_separability(
    real: np.ndarray, synthetic: np.ndarray, train_fraction: float = defaults.SVM_TRAIN_FRACTION,
    seed: int = defaults.SEED,
) -> dict:
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x = np.concatenate([real, synthetic]).astype(np.float64)
    y = np.concatenate([np.zeros(len(real), int), np.ones(len(synthetic), int)])
    keep = np.std(x, axis=0) > 0  # drop constant columns (e.g. colourfulness of greyscale sets)
    x = x[:, keep]
    n_train_min = int(np.floor(min(len(real), len(synthetic)) * train_fraction))
    if n_train_min < 3 or x.shape[1] == 0:
        raise MetricsError(
            f"too few images for the SVM separability test: {len(real)} real, {len(synthetic)} synthetic "
            f"(a {train_fraction:.0%} training split needs ≥ 3 of each; use ≥ {int(np.ceil(3 / train_fraction))} per set)"
        )
    xtr, xva, ytr, yva = train_test_split(x, y, train_size=train_fraction, stratify=y, random_state=seed)
    folds = StratifiedKFold(n_splits=min(3, int(np.bincount(ytr).min())), shuffle=True, random_state=seed)
    grids = {
        "linear": {"svc__C": [0.01, 0.1, 1, 10, 100]},
        "rbf": {"svc__C": [0.1, 1, 10, 100], "svc__gamma": ["scale", 0.01, 0.1, 1]},
    }
    out: dict = {
        "train_fraction": train_fraction,
        "n_train": int(len(ytr)),
        "n_validation": int(len(yva)),
        "features": int(x.shape[1]),
        "literature_f1_ddpm_cxr": LITERATURE_F1_DDPM_CXR,
    }
    for kernel, grid in grids.items():
        pipe = make_pipeline(StandardScaler(), SVC(kernel=kernel))
        gs = GridSearchCV(pipe, grid, scoring="f1", cv=folds, n_jobs=1)
        gs.fit(xtr, ytr)
        pred = gs.predict(xva)
        out[kernel] = {
            "f1": float(f1_score(yva, pred)),
            "accuracy": float((pred == yva).mean()),
            "best_params": {k.replace("svc__", ""): v for k, v in gs.best_params_.items()},
        }
    out["f1_best"] = max(out["linear"]["f1"], out["rbf"]["f1"])
    return out


def _compute(inp: MeasureInput) -> Outcome:
    sep = svm_separability(inp.real.spatial, inp.synthetic.spatial, train_fraction=inp.options["svm_train_fraction"],
                           seed=inp.seed)
    scores = [Score(metric="svm", name=f"svm_f1_{kernel}", value=sep[kernel]["f1"],
                    params={"features": "spatial", **sep[kernel]["best_params"]}) for kernel in ("linear", "rbf")]
    return Outcome(scores, {"separability": sep})


register_measure(Measure(
    name="svm", inputs=frozenset({SPATIAL}), compute=_compute, details=("separability",),
    options={"svm_train_fraction": defaults.SVM_TRAIN_FRACTION},
    summary="separability of real vs synthetic: F1 of linear / RBF SVMs on the spatial features",
))
