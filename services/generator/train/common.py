"""Training utilities shared by the generator families: EMA, exact-resume checkpoints, run-folder and
resume checks, RNG state, time budget, sample grids (conditions, labelled PNGs), metric logs."""

from __future__ import annotations

import json
import os
import random
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from services.common.findings import FINDINGS, HUMAN_NAMES, Condition

CHECKPOINT = "checkpoint.pt"


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


def ema_warmup_beta(step: int, decay: float) -> float:
    """Constant decay with a warm-up, ``min(decay, (1 + step) / (10 + step))`` (diffusion training)."""
    return min(decay, (1 + step) / (10 + step))


# ---- options shared by the train commands -------------------------------------------------------------------
def parse_views(spec: str | None) -> tuple[str, ...] | None:
    """``"PA,ap"`` -> ``("PA", "AP")``; ``"all"`` / empty / None -> None (every view, also images without one)."""
    if spec is None:
        return None
    views = tuple(dict.fromkeys(v.strip().upper() for v in str(spec).split(",") if v.strip()))
    return None if not views or "ALL" in views else views


def describe_views(views) -> str:
    """Human-readable view selection, e.g. ``"PA, AP"`` or ``"all (every view position)"``."""
    parsed = parse_views(views) if isinstance(views, str) or views is None else tuple(views)
    return ", ".join(parsed) if parsed else "all (every view position)"


# ---- RNG -------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every RNG's state in types ``torch.load(weights_only=True)`` reads (tensors, ints, floats, lists)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    st = {"torch": torch.get_rng_state(),
          "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(gauss)},
          "python": [int(version), list(internal), gauss_next]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"].cpu())  # a checkpoint loaded with map_location=cuda moves it
    npst = st["numpy"]
    if isinstance(npst, dict):
        keys = np.asarray(npst["keys"].cpu().numpy(), dtype=np.uint32)
        np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["gauss"]))
    else:  # checkpoints of earlier versions: numpy's own tuple
        np.random.set_state(npst)
    py = st["python"]
    random.setstate((int(py[0]), tuple(py[1]), py[2]))
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
def _safe_types(obj: Any) -> Any:
    """``obj`` with paths as strings and numpy values as tensors / Python numbers, so the checkpoint loads
    with ``torch.load(weights_only=True)`` (no pickled objects, no code run on load)."""
    if isinstance(obj, dict):
        return {k: _safe_types(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_safe_types(v) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Atomic ``torch.save`` (temp file + rename) of ``state`` in safe types: a crash never leaves a truncated
    checkpoint, and loading one never unpickles objects."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(_safe_types(state), tmp)
    os.replace(tmp, path)
    return path


class RunFolderExists(ValueError):
    """The output folder already holds a checkpoint and neither resume nor overwrite was asked for."""


def check_run_folder(out: str | os.PathLike, resume: bool = False, overwrite: bool = False,
                     checkpoint: str = CHECKPOINT) -> None:
    """Refuse to start a fresh run over ``OUT/checkpoint.pt`` unless ``resume`` or ``overwrite`` is given."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: --resume continues the run in --out, "
                         "--overwrite starts a new one over it")
    ckpt = Path(out) / checkpoint
    if ckpt.exists() and not (resume or overwrite):
        raise RunFolderExists(f"{ckpt} already exists: pass --resume to continue that run, --overwrite to start "
                              f"a new run over it, or choose a new --out")


def config_mismatch(saved: dict, current: dict) -> list[str]:
    """``"field: checkpoint X, now Y"`` for each top-level field that differs (missing -> ``<unset>``)."""
    unset = "<unset>"
    out = []
    for k in list(saved) + [k for k in current if k not in saved]:
        a, b = saved.get(k, unset), current.get(k, unset)
        if a != b:
            out.append(f"{k}: checkpoint {a!r}, now {b!r}")
    return out


def check_resume_config(path: str | os.PathLike, what: str, saved: dict, current: dict) -> None:
    """``ValueError`` naming only the differing fields when a checkpoint's ``what`` config is not ``current``."""
    if saved == current:
        return
    diff = config_mismatch(saved, current) or ["(values differ)"]
    raise ValueError(f"checkpoint {path} was trained with a different {what} ({'; '.join(diff)}); "
                     f"use the same options or a new --out")


class UnsafeCheckpoint(ValueError):
    """A checkpoint that holds pickled objects beyond tensors and plain containers: not loaded (unpickling it
    could run code)."""


#: numpy types that checkpoints of earlier synthrad versions hold (numpy's RNG state); allowed by name only
_LEGACY_NUMPY = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
                 "numpy.dtype", "numpy.dtypes.UInt32DType")


def _legacy_numpy_globals() -> list:
    import importlib

    out = []
    for name in _LEGACY_NUMPY:
        mod, _, attr = name.rpartition(".")
        try:
            out.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):
            continue
    return out


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a training checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only
    (plus numpy arrays for checkpoints of earlier versions); anything else raises :class:`UnsafeCheckpoint`."""
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(
            f"{Path(path).name} holds objects other than tensors and plain values, so it is not loaded (unpickling "
            f"it could run code): {str(e).splitlines()[0][:200]}. Resume only from checkpoints synthrad wrote.") from None


# ---- time budget ------------------------------------------------------------------------------------------
class TimeBudget:
    """``--max-minutes``: counted from the trainer's start (data loading included) to the last file written.

    The loop stops when the time left no longer covers what finishing costs — the final checkpoint, export
    and sample grid — as measured when this run last did each (:meth:`record`), times a safety factor; costs
    not yet seen count with the ``prior`` the trainer gives."""

    def __init__(self, max_minutes: float | None, reserve_s: float = 0.0, safety: float = 1.3,
                 already_s: float = 0.0):
        self.start = time.monotonic() - already_s  # already_s: spent before the trainer existed (imports ...)
        self.limit = None if not max_minutes else max_minutes * 60.0 - reserve_s
        self.safety = safety
        self.costs: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return float("inf") if self.limit is None else self.limit - self.elapsed()

    def record(self, what: str, seconds: float) -> None:
        self.costs[what] = max(self.costs.get(what, 0.0), float(seconds))

    def finish_cost(self, needs: dict[str, float]) -> float:
        """Seconds finishing takes: ``needs`` = {kind: prior seconds} of what the end of the run does."""
        return self.safety * sum(self.costs.get(k, prior) for k, prior in needs.items())

    def exceeded(self, finish: float = 0.0) -> bool:
        return self.limit is not None and self.elapsed() + finish >= self.limit

    def allows(self, what: str, finish: float, prior: float = 0.0) -> bool:
        """Whether an optional step (a mid-run grid or snapshot) still fits before finishing."""
        return self.limit is None or self.elapsed() + self.costs.get(what, prior) * self.safety + finish < self.limit


def process_age_s() -> float:
    """Seconds since this process started (the CLI's budget counts its start-up: imports, argument checks)."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


class timed:
    """``with timed(budget, "grid"): ...`` records the block's duration as that kind's cost."""

    def __init__(self, budget: TimeBudget, what: str):
        self.budget, self.what = budget, what

    def __enter__(self):
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.budget.record(self.what, time.monotonic() - self.t0)
        return False


# ---- how a trainer uses the device --------------------------------------------------------------------------
@dataclass(frozen=True)
class Acceleration:
    """Speed settings of a training run; ``None`` = auto: everything on for CUDA (bf16 autocast,
    channels_last, torch.compile, fused Adam, the dataset resident on the GPU as uint8), off on CPU (fp32
    eager: bf16 and compile are slower than fp32 on CPUs without AMX/AVX-512 BF16)."""

    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    fused: bool = False

    @classmethod
    def resolve(cls, device: str, amp: bool | None = None, channels_last: bool | None = None,
                compile: bool | None = None, fused: bool | None = None) -> "Acceleration":
        cuda = str(device).startswith("cuda")
        pick = lambda v: cuda if v is None else bool(v)  # noqa: E731
        return cls(amp=pick(amp), channels_last=pick(channels_last), compile=pick(compile),
                   fused=cuda if fused is None else (bool(fused) and cuda))

    def autocast(self, device: str):
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=self.amp)

    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> dict:
        return {"amp": "bf16" if self.amp else "fp32", "channels_last": self.channels_last,
                "compile": self.compile, "fused_adam": self.fused}


def enable_tf32(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


# ---- images ------------------------------------------------------------------------------------------------
def to_uint8(img: np.ndarray) -> np.ndarray:
    """(…, H, W) float in [0, 1] -> uint8."""
    return np.clip(np.rint(np.asarray(img, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def grid_conditions() -> list[tuple[str, Condition]]:
    """Rows of the training sample grids (every family): unconditional, no finding, then each finding present
    with the others absent; labels are the full human-readable names."""
    rows = [("unconditional", Condition()), ("no finding", Condition.no_finding())]
    for f in FINDINGS:
        rows.append((HUMAN_NAMES[f], Condition.from_findings([f], [g for g in FINDINGS if g != f])))
    return rows


def _text_size(draw, text: str, font) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.multiline_textbbox((0, 0), text, font=font, spacing=1)
    return x1, y1  # extent from the drawing origin (what the row must hold)


def _wrap_labels(labels: Sequence[str], draw, font, row_h: int) -> list[str]:
    """Labels wrapped (at spaces, never truncated) to the narrowest width at which every label still fits the
    row height; labels too tall even on one line stay on one line."""
    longest = max(len(s) for s in labels)
    longest_word = max((len(w) for s in labels for w in s.split()), default=1)
    for width in range(max(longest_word, 1), longest + 1):
        wrapped = ["\n".join(textwrap.wrap(s, width, break_long_words=False)) or s for s in labels]
        if all(_text_size(draw, t, font)[1] <= row_h for t in wrapped):
            return wrapped
    return list(labels)


def save_grid(rows: Sequence[np.ndarray], path: str | os.PathLike, labels: Sequence[str] | None = None,
              pad: int = 2, label_width: int = 0) -> Path:
    """Save a grid PNG: ``rows[i]`` is (n_cols, H, W) float [0, 1]; optional text label left of each row.
    Labels are shown in full: wrapped onto several lines when the rows are tall enough."""
    from PIL import Image, ImageDraw, ImageFont

    rows = [np.asarray(r, dtype=np.float32) for r in rows]
    n_cols = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[1:]
    font = ImageFont.load_default()
    text = list(labels or [])
    sizes: list[tuple[int, int]] = []
    if text:
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        text = _wrap_labels(text, probe, font, h)
        sizes = [_text_size(probe, t, font) for t in text]
        if not label_width:
            label_width = 8 + max(sw for sw, _ in sizes)
    H = len(rows) * (h + pad) + pad
    W = label_width + n_cols * (w + pad) + pad
    canvas = np.full((H, W), 255, dtype=np.uint8)
    for i, r in enumerate(rows):
        for j in range(r.shape[0]):
            y = pad + i * (h + pad)
            x = label_width + pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = to_uint8(r[j])
    im = Image.fromarray(canvas, mode="L")
    if text:
        d = ImageDraw.Draw(im)
        for i, s in enumerate(text):
            d.multiline_text((4, pad + i * (h + pad) + max(0, (h - sizes[i][1]) // 2)), s, fill=0, font=font,
                             spacing=1)
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
        self._set_perm(torch.randperm(self.n, generator=self.gen))
        self.pos = 0

    def _set_perm(self, perm: torch.Tensor) -> None:
        # a preloaded dataset draws its batches on the device: the epoch's permutation is copied there once,
        # so a step does no host-to-device copy (which would wait for the GPU's queue)
        self.perm = perm.cpu()
        self._perm_dev = self.perm.to(self.images.device) if self.preloaded else self.perm

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, st: dict) -> None:
        # checkpoints are loaded with map_location=device; RNG states must be CPU byte tensors again
        self.gen.set_state(st["gen"].cpu())
        self._set_perm(st["perm"])
        self.pos = st["pos"]

    def _indices(self) -> torch.Tensor:
        out = []
        need = self.batch_size
        while need > 0:
            if self.pos >= self.n:
                self._set_perm(torch.randperm(self.n, generator=self.gen))
                self.pos = 0
            take = min(need, self.n - self.pos)
            out.append(self._perm_dev[self.pos:self.pos + take])
            self.pos += take
            need -= take
        return torch.cat(out)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._indices()
        if self.preloaded:
            return self.images[idx], self.codes[idx]
        xs, cs = zip(*(self.dataset[int(i)] for i in idx))
        x = torch.stack([torch.as_tensor(v) for v in xs]).to(self.device, non_blocking=True)
        c = torch.stack([torch.as_tensor(v, dtype=torch.long) for v in cs]).to(self.device, non_blocking=True)
        return x, c
