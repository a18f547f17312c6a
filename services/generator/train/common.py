"""Training utilities shared by the generator families: EMA, exact-resume checkpoints, RNG state,
time budget, sample grids, metric logs."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


# ---- EMA ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, beta: float) -> None:
    """``ema = beta * ema + (1 - beta) * model`` for parameters; buffers are copied."""
    pe = list(ema.parameters())
    pm = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(pe, pm, 1.0 - beta)  # pe + (1 - beta) * (pm - pe)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def ema_beta(batch_size: int, cur_nimg: int, ema_kimg: float, rampup: float | None = 0.05) -> float:
    """NVlabs half-life EMA: half-life ``ema_kimg`` thousand images, ramped up over the first images."""
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


# ---- RNG -------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"].cpu())  # a checkpoint loaded with map_location=cuda moves it
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all([t.cpu() for t in st["cuda"]])
        except Exception:  # pragma: no cover - different GPU count
            pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- checkpoints -------------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Atomic ``torch.save`` (temp file + rename): a crash never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    # Our own checkpoints hold numpy RNG state and plain dicts; weights_only=False is needed for those.
    return torch.load(path, map_location=map_location, weights_only=False)


# ---- time budget ------------------------------------------------------------------------------------------
class TimeBudget:
    def __init__(self, max_minutes: float | None, reserve_s: float = 0.0):
        self.start = time.monotonic()
        self.limit = None if not max_minutes else max_minutes * 60.0 - reserve_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def exceeded(self) -> bool:
        return self.limit is not None and self.elapsed() >= self.limit


# ---- images ------------------------------------------------------------------------------------------------
def to_uint8(img: np.ndarray) -> np.ndarray:
    """(…, H, W) float in [0, 1] -> uint8."""
    return np.clip(np.rint(np.asarray(img, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def save_grid(rows: Sequence[np.ndarray], path: str | os.PathLike, labels: Sequence[str] | None = None,
              pad: int = 2, label_width: int = 0) -> Path:
    """Save a grid PNG: ``rows[i]`` is (n_cols, H, W) float [0, 1]; optional text label left of each row."""
    from PIL import Image, ImageDraw

    rows = [np.asarray(r, dtype=np.float32) for r in rows]
    n_cols = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[1:]
    if labels and not label_width:
        label_width = 8 + 6 * max(len(s) for s in labels)
    H = len(rows) * (h + pad) + pad
    W = label_width + n_cols * (w + pad) + pad
    canvas = np.full((H, W), 255, dtype=np.uint8)
    for i, r in enumerate(rows):
        for j in range(r.shape[0]):
            y = pad + i * (h + pad)
            x = label_width + pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = to_uint8(r[j])
    im = Image.fromarray(canvas, mode="L")
    if labels:
        d = ImageDraw.Draw(im)
        for i, s in enumerate(labels):
            d.text((4, pad + i * (h + pad) + h // 2 - 5), s, fill=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


class JsonlLog:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **rec: Any) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec, default=float) + "\n")


# ---- data --------------------------------------------------------------------------------------------------
class InfiniteBatches:
    """Random batches (with replacement across epochs, reshuffled each epoch) from a map-style dataset of
    ``(image, codes)``. Small datasets are preloaded to ``device`` (one tensor) so a step costs no I/O.
    The sampling RNG is a dedicated ``torch.Generator`` whose state is checkpointed (exact resume)."""

    def __init__(self, dataset, batch_size: int, device: str, seed: int = 0, preload_max_bytes: int = 2 << 30,
                 num_workers: int = 0):
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)
        self.n = len(dataset)
        if self.n == 0:
            raise ValueError("the training dataset is empty (check --data, --layout, --views, --split)")
        x0, _ = dataset[0]
        self.preloaded = self.n * x0.numel() * 4 <= preload_max_bytes
        if self.preloaded:
            xs, cs = zip(*(dataset[i] for i in range(self.n)))
            self.images = torch.stack([torch.as_tensor(x) for x in xs]).to(device)
            self.codes = torch.stack([torch.as_tensor(c, dtype=torch.long) for c in cs]).to(device)
        self.perm = torch.randperm(self.n, generator=self.gen)
        self.pos = 0

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, st: dict) -> None:
        # checkpoints are loaded with map_location=device; RNG states must be CPU byte tensors again
        self.gen.set_state(st["gen"].cpu())
        self.perm = st["perm"].cpu()
        self.pos = st["pos"]

    def _indices(self) -> torch.Tensor:
        out = []
        need = self.batch_size
        while need > 0:
            if self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.gen)
                self.pos = 0
            take = min(need, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            need -= take
        return torch.cat(out)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._indices()
        if self.preloaded:
            d = self.images.device
            return self.images[idx.to(d)], self.codes[idx.to(d)]
        xs, cs = zip(*(self.dataset[int(i)] for i in idx))
        x = torch.stack([torch.as_tensor(v) for v in xs]).to(self.device, non_blocking=True)
        c = torch.stack([torch.as_tensor(v, dtype=torch.long) for v in cs]).to(self.device, non_blocking=True)
        return x, c
