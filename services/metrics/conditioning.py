"""Conditional agreement: do generated images show the findings they were conditioned on?

A small multi-label CNN is trained on the real training split (4 findings; NIH: lung_opacity =
Infiltration | Consolidation | Pneumonia). For each finding ``f`` the generator makes ``n`` images conditioned
"f present" and ``n`` conditioned "f absent" (other findings unspecified) and we report

* ``auc``: ROC-AUC of the classifier's probability for ``f`` separating the two generated groups;
* ``accuracy``: fraction of generated images whose thresholded prediction equals the condition (the groups are
  balanced, so this is also the balanced accuracy);

next to the **same classifier on real held-out images** (``valid`` split; the patient ``test`` split with
``split_by="patient"``): AUC against the real labels and
balanced accuracy at the same threshold (per finding, chosen on the training set by Youden's J). The real
column is the ceiling the classifier allows; generated numbers near it mean the condition is followed as
well as this classifier can tell.

Reusable for any family: :func:`evaluate_conditioning` takes any generator with the ``LoadedGenerator``
interface (``generate(conditions, seeds, params)``); this module never imports the generator package. From the
command line (it loads a registered model):

    synthrad models evaluate stylegan2-cxr64 --data ../shared/data/nih-chestxray14-64 --layout nih \
        --views PA,AP --json out.json
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from services.common.findings import FINDINGS, Condition
from services.common.logging import get_logger

log = get_logger(__name__)
CLASSIFIER_RES = 64


class FindingClassifier(nn.Module):
    """4 conv blocks (32-64-128-256, BN, ReLU, max-pool) + global average pool + linear -> 4 logits."""

    def __init__(self, num_findings: int = len(FINDINGS), width: int = 32):
        super().__init__()
        layers, c_in = [], 1
        for i in range(4):
            c_out = width * 2**i
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_findings)

    def forward(self, x):  # x: (N, 1, R, R) in [0, 1]
        x = (x - 0.5) / 0.25
        return self.head(self.features(x).mean(dim=[2, 3]))


def _prep(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim == 3:
        x = x[:, None]
    if x.shape[-1] != CLASSIFIER_RES:
        x = F.interpolate(x, size=(CLASSIFIER_RES, CLASSIFIER_RES), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > CLASSIFIER_RES)
    return x


def load_real(data: str, layout: str, views: Sequence[str] | None, split: str, cache_dir=None,
              split_by: str = "recorded"):
    """Real images (N, R, R) in [0, 1] and codes (N, 4) of a split (``split_by``: see ``load_records``)."""
    from services.common.datasets import XrayDataset, load_records

    recs = load_records(data, layout, views=views, split=split, split_by=split_by)
    kw = {"cache_dir": cache_dir} if cache_dir else {}
    ds = XrayDataset(recs, CLASSIFIER_RES, **kw)
    xs, cs = zip(*(ds[i] for i in range(len(ds))))
    x = (torch.stack([torch.as_tensor(v) for v in xs])[:, 0].numpy() + 1.0) / 2.0
    return x.astype(np.float32), torch.stack([torch.as_tensor(c) for c in cs]).numpy()


def train_classifier(images: np.ndarray, codes: np.ndarray, device: str = "cpu", epochs: int = 40, batch: int = 64,
                     lr: float = 2e-3, seed: int = 0, width: int = 32) -> FindingClassifier:
    """Multi-label BCE on findings with known state (code 2 = unknown is masked out). Augmentation: small
    translations and brightness/contrast jitter (no flips: anatomy is lateralised)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = FindingClassifier(codes.shape[1], width).to(device)
    x_all = _prep(images).to(device)
    y_all = torch.as_tensor(codes, dtype=torch.float32, device=device)
    known = (y_all != 2).float()
    y_all = y_all.clamp(max=1)
    pos = (y_all * known).sum(0)
    neg = ((1 - y_all) * known).sum(0)
    pos_weight = (neg / pos.clamp(min=1)).clamp(max=20)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = x_all.shape[0]
    steps = epochs * max(1, n // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=g).to(device)
        x, y, k = x_all[idx], y_all[idx], known[idx]
        sh = torch.randint(-4, 5, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=sh, dims=(2, 3))
        b = (torch.rand(x.shape[0], 1, 1, 1, generator=g).to(device) - 0.5) * 0.1
        cst = 0.9 + torch.rand(x.shape[0], 1, 1, 1, generator=g).to(device) * 0.2
        m = x.mean(dim=[2, 3], keepdim=True)
        x = ((x - m) * cst + m + b).clamp(0, 1)
        loss = (F.binary_cross_entropy_with_logits(model(x), y, pos_weight=pos_weight, reduction="none") * k).sum() \
            / k.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: FindingClassifier, images, device: str = "cpu", batch: int = 256) -> np.ndarray:
    x = _prep(images)
    out = []
    for i in range(0, x.shape[0], batch):
        out.append(torch.sigmoid(model(x[i:i + batch].to(device))).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, len(FINDINGS)), np.float32)


def _youden_threshold(p: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    return float(np.clip(thr[int(np.argmax(tpr - fpr))], 0.0, 1.0))


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None


def _bal_acc(y: np.ndarray, pred: np.ndarray) -> float | None:
    if len(np.unique(y)) < 2:
        return None
    return float(0.5 * ((pred[y == 1] == 1).mean() + (pred[y == 0] == 0).mean()))


def evaluate_conditioning(generator, data: str, layout: str = "nih", views: Sequence[str] | None = ("PA", "AP"),
                          n_per_condition: int = 200, device: str = "cpu", seed: int = 0, params=None,
                          classifier: FindingClassifier | None = None, epochs: int = 40, cache_dir=None,
                          seed_offset: int = 1_000_000, split_by: str = "recorded") -> dict:
    """Per-finding agreement of ``generator`` (a LoadedGenerator) with its conditions vs the same classifier
    on real held-out images. Returns a JSON-able dict (see module docstring). ``split_by="patient"``: train on
    the patient-disjoint ``train`` split and hold out its ``test`` split (data sets without recorded splits,
    e.g. Kermany, need it)."""
    t0 = time.time()
    heldout = "test" if split_by == "patient" else "valid"
    xtr, ctr = load_real(data, layout, views, "train", cache_dir, split_by)
    xva, cva = load_real(data, layout, views, heldout, cache_dir, split_by)
    if classifier is None:
        classifier = train_classifier(xtr, ctr, device=device, epochs=epochs, seed=seed)
    classifier = classifier.to(device).eval()
    p_tr = predict(classifier, xtr, device)
    p_va = predict(classifier, xva, device)
    out = {"data": str(data), "layout": layout, "views": list(views) if views else None,
           "split_by": split_by, "heldout_split": heldout,
           "n_train": int(len(xtr)), "n_valid": int(len(xva)), "n_per_condition": n_per_condition,
           "model_id": getattr(generator, "model_id", None), "backend": getattr(generator, "backend", None),
           "findings": {}}
    for j, f in enumerate(FINDINGS):
        ktr = ctr[:, j] != 2
        thr = _youden_threshold(p_tr[ktr, j], ctr[ktr, j])
        kva = cva[:, j] != 2
        y_real = cva[kva, j]
        real = {"auc": _auc(y_real, p_va[kva, j]), "balanced_accuracy": _bal_acc(y_real, (p_va[kva, j] > thr).astype(int)),
                "n_pos": int((y_real == 1).sum()), "n_neg": int((y_real == 0).sum())}
        present = Condition.from_findings(present=[f])
        absent = Condition.from_findings(absent=[f])
        base = seed_offset + j * 10 * n_per_condition
        seeds_p = [base + i for i in range(n_per_condition)]
        seeds_a = [base + n_per_condition + i for i in range(n_per_condition)]
        imgs = generator.generate([present] * n_per_condition + [absent] * n_per_condition, seeds_p + seeds_a, params)
        p_gen = predict(classifier, imgs, device)[:, j]
        y_gen = np.array([1] * n_per_condition + [0] * n_per_condition)
        pred = (p_gen > thr).astype(int)
        gen = {"auc": _auc(y_gen, p_gen), "accuracy": float((pred == y_gen).mean()),
               "mean_prob_present": float(p_gen[y_gen == 1].mean()), "mean_prob_absent": float(p_gen[y_gen == 0].mean())}
        out["findings"][f] = {"threshold": thr, "real_heldout": real, "generated": gen}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def format_table(res: dict) -> str:
    lines = [f"Conditional agreement — {res.get('model_id')} ({res['n_per_condition']} images per condition; "
             f"real held-out n={res['n_valid']})", "",
             "| finding | real AUC | real bal. acc. | generated AUC | generated acc. | p(present) / p(absent) |",
             "|---|---:|---:|---:|---:|---:|"]

    def f2(v):
        return "n/a" if v is None else f"{v:.3f}"

    for f, r in res["findings"].items():
        g, rl = r["generated"], r["real_heldout"]
        lines.append(f"| {f} | {f2(rl['auc'])} | {f2(rl['balanced_accuracy'])} | {f2(g['auc'])} | {f2(g['accuracy'])} | "
                     f"{g['mean_prob_present']:.2f} / {g['mean_prob_absent']:.2f} |")
    return "\n".join(lines)
