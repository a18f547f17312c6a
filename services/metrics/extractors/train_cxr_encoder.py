"""Train the ``cxr-encoder`` extractor on the labelled real data in ../shared/data (maintainers only).

    python -m services.metrics.extractors.train_cxr_encoder --data ../shared/data --epochs 8

Data: NIH ChestX-ray14 64 px train split (600; multi-label: Atelectasis, Effusion, Cardiomegaly, opacity =
Infiltration|Consolidation|Pneumonia, No Finding) and Kermany paediatric pneumonia 224 px (5216; normal /
bacteria / virus), 10 % of Kermany held out. Multi-task loss (CE Kermany + BCE NIH + source CE). Held-out
numbers (NIH valid AUCs, Kermany accuracy) go into the weights file's metadata.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from services.common.datasets.nih import NIH_MAP
from services.metrics.extractors.cxr import KERMANY_CLASSES, NIH_LABELS, SIZE, WEIGHTS_FILE, CXREncoder
from services.metrics.sources import read_image

OPACITY = NIH_MAP["lung_opacity"]  # the one NIH lung-opacity stand-in (docs/datasets.md)


def _to64(im: np.ndarray) -> np.ndarray:
    g = im.mean(axis=2) if im.ndim == 3 else im
    t = torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32))[None, None]
    if t.shape[-2:] != (SIZE, SIZE):
        t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    return t[0, 0].numpy()


def load_nih(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    with open(root / "labels.csv") as f:
        for row in csv.DictReader(f):
            if row["split"] != split:
                continue
            labels = set(row["finding_labels"].split("|"))
            y = [
                "Atelectasis" in labels,
                "Effusion" in labels,
                "Cardiomegaly" in labels,
                bool(labels & OPACITY),
                "No Finding" in labels,
            ]
            xs.append(_to64(read_image(root / row["path"])))
            ys.append(y)
    return np.stack(xs), np.asarray(ys, dtype=np.float32)


def load_kermany(root: Path) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for p in sorted(root.rglob("*.jpeg")) + sorted(root.rglob("*.jpg")):
        cls = 0 if p.parent.name == "NORMAL" else (1 if "bacteria" in p.name else 2)
        xs.append(_to64(read_image(p)))
        ys.append(cls)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(WEIGHTS_FILE))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = Path(args.data)
    t0 = time.time()
    nih_x, nih_y = load_nih(data / "nih-chestxray14-64", "train")
    nihv_x, nihv_y = load_nih(data / "nih-chestxray14-64", "valid")
    k_x, k_y = load_kermany(data / "kermany-pneumonia-224" / "train")
    perm = rng.permutation(len(k_x))
    n_hold = len(k_x) // 10
    kv_x, kv_y = k_x[perm[:n_hold]], k_y[perm[:n_hold]]
    kt_x, kt_y = k_x[perm[n_hold:]], k_y[perm[n_hold:]]
    print(f"loaded NIH {len(nih_x)}+{len(nihv_x)}, Kermany {len(kt_x)}+{len(kv_x)} in {time.time() - t0:.0f}s", flush=True)

    # one list of (image, source, label) ; NIH oversampled ×4 so both tasks shape the embedding
    X = np.concatenate([kt_x] + [nih_x] * 4)
    src = np.concatenate([np.zeros(len(kt_x), np.int64), np.ones(4 * len(nih_x), np.int64)])
    ky = np.concatenate([kt_y, np.zeros(4 * len(nih_x), np.int64)])
    ny = np.concatenate([np.zeros((len(kt_x), len(NIH_LABELS)), np.float32), np.tile(nih_y, (4, 1))])
    net = CXREncoder()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * (len(X) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    pos_w = torch.tensor((len(nih_y) - nih_y.sum(0)) / np.maximum(nih_y.sum(0), 1)).clamp(max=10)
    for ep in range(args.epochs):
        net.train()
        order = rng.permutation(len(X))
        tot, t1 = 0.0, time.time()
        for b in range(len(X) // args.batch):
            idx = order[b * args.batch : (b + 1) * args.batch]
            x = torch.from_numpy(X[idx])[:, None]
            # augmentation: small shifts, contrast/brightness jitter (no flips: laterality matters)
            dx, dy = rng.integers(-4, 5, 2)
            x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))
            g = torch.from_numpy(rng.uniform(0.8, 1.2, (len(idx), 1, 1, 1)).astype(np.float32))
            o = torch.from_numpy(rng.uniform(-0.08, 0.08, (len(idx), 1, 1, 1)).astype(np.float32))
            x = ((x - 0.5) * g + 0.5 + o).clamp(0, 1)
            x = (x - 0.5) / 0.25
            s = torch.from_numpy(src[idx])
            _, lk, ln, ls = net(x)
            loss = F.cross_entropy(ls, s)
            km = s == 0
            if km.any():
                loss = loss + F.cross_entropy(lk[km], torch.from_numpy(ky[idx])[km])
            if (~km).any():
                loss = loss + F.binary_cross_entropy_with_logits(
                    ln[~km], torch.from_numpy(ny[idx])[~km], pos_weight=pos_w
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        print(f"epoch {ep + 1}/{args.epochs} loss {tot / (len(X) // args.batch):.3f} ({time.time() - t1:.0f}s)", flush=True)

    net.eval()
    with torch.no_grad():
        _, lk, _, _ = net((torch.from_numpy(kv_x)[:, None] - 0.5) / 0.25)
        k_acc = float((lk.argmax(1).numpy() == kv_y).mean())
        k_pn = float(((lk.argmax(1).numpy() > 0) == (kv_y > 0)).mean())
        _, _, ln, _ = net((torch.from_numpy(nihv_x)[:, None] - 0.5) / 0.25)
        aucs = {name: _auc(nihv_y[:, i], ln[:, i].numpy()) for i, name in enumerate(NIH_LABELS)}
    metrics = {"kermany_holdout_acc_3class": k_acc, "kermany_holdout_acc_normal_vs_pneumonia": k_pn, "nih_valid_auc": aucs}
    print(json.dumps(metrics, indent=1))
    from safetensors.torch import save_file

    # stored as float16 (2.5 MB; computed in float32); the tensor hash is over the stored values
    sd = {k: v.detach().half().contiguous() for k, v in net.state_dict().items() if "num_batches_tracked" not in k}
    th = hashlib.sha256(b"".join(sd[k].float().numpy().tobytes() for k in sorted(sd))).hexdigest()
    meta = {
        "tensor_sha256": th,
        "trained_on": json.dumps({"nih-chestxray14-64/train": len(nih_x), "kermany-pneumonia-224/train (90%)": len(kt_x)}),
        "heads": json.dumps({"kermany": KERMANY_CLASSES, "nih": NIH_LABELS}),
        "holdout": json.dumps(metrics),
        "epochs": str(args.epochs),
        "storage": "float16 (computed in float32)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, args.out, metadata=meta)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB) in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
