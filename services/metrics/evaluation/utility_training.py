"""The train / evaluate loop of utility (``utility.py``): one recipe for every classifier of a run.

* labels: :func:`task_labels` turns finding codes into targets + a mask (code 2 "unspecified" is masked; the
  ``pneumonia`` task keeps lung_opacity = 1 as pneumonia and all-absent as normal, and drops the rest).
* :func:`train_classifier`: a fresh ``networks.Classifier`` (initialised from the seed alone, so every
  classifier of one seed starts from the same weights), AdamW + cosine decay, a fixed number of epochs over
  its training set, random ±``SHIFT`` px translations (no flips: a chest X-ray is not left-right symmetric),
  then its BatchNorm statistics recomputed on the training images (:func:`recalibrate_batchnorm`).
* :func:`fit_head`: feature-extraction utility's last-layer fine-tune: the backbone frozen (eval mode), its
  features computed once, a fresh linear head fitted as logistic regression.
* :func:`score`: accuracy (pneumonia) or the mean ROC-AUC over the findings with both states in the test set.

Deterministic on CPU for a given seed and thread count (every random draw comes from seeded generators).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from services.common.findings import FINDINGS
from services.metrics.evaluation.networks import build_classifier

LUNG_OPACITY = FINDINGS.index("lung_opacity")
SHIFT = 4  # px of random translation at 64 px (scaled with the resolution)


@dataclass(frozen=True)
class Recipe:
    arch: str
    epochs: int
    batch: int
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "AdamW, cosine decay to 0, no warm-up"
    loss: str = "binary cross-entropy per output, unspecified labels masked out"
    augmentation: str = "random translation ±4 px per 64 px (edge replicated); no flips"
    batchnorm: str = "running statistics recomputed on up to 4096 training images after training"
    head: str = ("fresh linear head on the frozen backbone's features (eval mode): per output an L2 logistic "
                 "regression (scikit-learn lbfgs) on the standardised features")
    head_c: float = 1.0
    head_max_iter: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)


def task_labels(codes: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keep, targets, mask)`` from (n, 4) codes. ``keep``: rows with at least one usable label;
    ``targets``/``mask`` (n_kept, k) float32 (k = 1 for pneumonia, 4 for findings)."""
    c = np.asarray(codes, dtype=np.int8)
    if task == "pneumonia":
        pneu = c[:, LUNG_OPACITY] == 1
        normal = (c == 0).all(1)
        keep = pneu | normal
        y = pneu[keep].astype(np.float32)[:, None]
        return keep, y, np.ones_like(y)
    mask = c != 2
    keep = mask.any(1)
    return keep, (c[keep] == 1).astype(np.float32), mask[keep].astype(np.float32)


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image of (n, 1, h, w) translated by its own random (dy, dx) in [-s, s] (edge replicated)."""
    s = max(1, round(SHIFT * x.shape[-1] / 64))
    n, _, h, w = x.shape
    padded = F.pad(x, (s, s, s, s), mode="replicate")[:, 0]
    dy = torch.randint(0, 2 * s + 1, (n, 1, 1), generator=g)
    dx = torch.randint(0, 2 * s + 1, (n, 1, 1), generator=g)
    rows = dy + torch.arange(h).view(1, h, 1)
    cols = dx + torch.arange(w).view(1, 1, w)
    return padded[torch.arange(n).view(n, 1, 1), rows, cols][:, None]


def _masked_bce(logits: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * m
    return loss.sum() / m.sum().clamp_min(1.0)


def train_classifier(images: np.ndarray, targets: np.ndarray, mask: np.ndarray, recipe: Recipe,
                     seed: int) -> nn.Module:
    """A fresh classifier trained on ``images`` (n, r, r) [0, 1] for ``recipe.epochs`` epochs."""
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(seed)  # the initial weights: the same for every classifier of this seed
        model = build_classifier(recipe.arch, targets.shape[1])
    g = torch.Generator().manual_seed(seed + 7919)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    y, m = torch.from_numpy(targets), torch.from_numpy(mask)
    n = len(x)
    per_epoch = max(1, -(-n // recipe.batch))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i, total=recipe.epochs * per_epoch: 0.5 * (1 + np.cos(np.pi * min(i, total) / total)))
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(n, generator=g)
        for k in range(per_epoch):
            idx = order[k * recipe.batch:(k + 1) * recipe.batch]
            if len(idx) < 2:  # BatchNorm needs two samples; the last lone image waits for the next epoch
                continue
            loss = _masked_bce(model(_shift(x[idx], g)), y[idx], m[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    recalibrate_batchnorm(model, x[torch.randperm(n, generator=g)])
    return model


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch: int = 256, limit: int = 4096) -> None:
    """BatchNorm running statistics recomputed for the final weights (an exact average over up to ``limit``
    training images): torchvision's MobileNetV3 keeps them with momentum 0.01, so after the few hundred steps
    of a CPU budget they still sit near their initial values and the eval-mode network predicts one class."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for i in range(0, min(len(x), limit), batch):
        chunk = x[i:min(i + batch, limit)]
        if len(chunk) >= 2:
            model.features(chunk)
    model.eval()


@torch.no_grad()
def features(model: nn.Module, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    return torch.cat([model.features(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else \
        torch.zeros((0, model.num_features))


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Probabilities (n, k)."""
    return torch.sigmoid(model.head(features(model, images, batch))).numpy().astype(np.float64)


def fit_head(model: nn.Module, images: np.ndarray, targets: np.ndarray, mask: np.ndarray, recipe: Recipe) -> nn.Module:
    """Feature-extraction utility: ``model``'s backbone frozen, a fresh linear head fitted on ``images`` (one
    L2-regularised logistic regression per output on the standardised features; unspecified labels left out).
    Returns ``model`` with the new head (the backbone untouched)."""
    from sklearn.linear_model import LogisticRegression

    f = features(model, images).numpy().astype(np.float64)
    mu, sd = f.mean(0), np.maximum(f.std(0), 1e-6)
    z = (f - mu) / sd
    k = targets.shape[1]
    w, b = np.zeros((k, f.shape[1])), np.zeros(k)
    for j in range(k):
        keep = mask[:, j] > 0
        y = targets[keep, j]
        if keep.sum() and 0 < y.mean() < 1:
            lr = LogisticRegression(C=recipe.head_c, max_iter=recipe.head_max_iter).fit(z[keep], y)
            w[j], b[j] = lr.coef_[0], lr.intercept_[0]
        elif keep.sum():  # one state only: a constant prediction of it
            b[j] = 4.0 if y.mean() == 1 else -4.0
    head = nn.Linear(f.shape[1], k)
    with torch.no_grad():  # fold the standardisation in: head(f) = w · (f - mu) / sd + b
        head.weight.copy_(torch.from_numpy(w / sd).float())
        head.bias.copy_(torch.from_numpy(b - (w * (mu / sd)).sum(1)).float())
    model.head = head
    return model


def score(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, task: str,
          evaluated: list[int] | None = None) -> tuple[float, dict[str, float]]:
    """``(metric, per-finding)``: accuracy at p = 0.5 (pneumonia) or the mean ROC-AUC over ``evaluated``."""
    if task == "pneumonia":
        return float(((probs[:, 0] >= 0.5) == (targets[:, 0] == 1)).mean()), {}
    from sklearn.metrics import roc_auc_score

    per: dict[str, float] = {}
    for j in evaluated or range(targets.shape[1]):
        keep = mask[:, j] > 0
        per[FINDINGS[j]] = float(roc_auc_score(targets[keep, j], probs[keep, j]))
    return float(np.mean(list(per.values()))), per
