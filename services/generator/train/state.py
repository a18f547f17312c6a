"""The training state shipped beside a model, so ``synthrad train ... --resume-from <model>`` continues it.

GPU time comes in short windows; each window has to pick up where the last one stopped, and the repository and
a device window's output both limit files to 20 MB (16 MB out of a device window). A full checkpoint (networks,
EMA, both Adam moments in fp32) is 4-5x the weights, so what ships is a documented subset:

``<model_id>.train.safetensors`` (listed in the descriptor as ``training_state`` with its sha256):

* ``net/<name>/<param>`` (fp16): the networks the weights file does not hold. StyleGAN2: the raw generator
  ``G`` and the discriminator ``D`` (the weights file is the EMA generator). DDPM: none — the EMA weights
  seed both the EMA and the raw model (an EMA restart).
* ``adam/<name>/<param>/row`` + ``/col`` (fp32): Adam's second moments, factored as in Adafactor (Shazeer &
  Stern 2018): a tensor viewed as ``(d0, rest)`` keeps its row and column means and is restored as
  ``outer(row, col) / mean``; 1-D tensors are kept whole (``/full``). Kilobytes instead of megabytes.
* Adam's first moments are not kept: StyleGAN2 trains with ``beta1 = 0`` (the first moment *is* the last
  gradient, so nothing is lost); the DDPM's ``beta1 = 0.9`` rebuilds it within ~20 steps.
* metadata ``synthrad_state`` (JSON): family, step, images seen, training seconds, ADA probability, network /
  UNet config, the data the model was trained on, and what was kept.

The batch sampler and RNG state are not kept: a resumed run draws from a fresh permutation seeded by
``seed + step``. Exact, bit-for-bit resume within one run stays the job of ``OUT/checkpoint.pt``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

STATE_FORMAT = "synthrad-train-state-v1"
MAX_FILE_BYTES = 20 * 1000 * 1000  # the repository's limit per weights file
KEPT = ("networks the weights file lacks (fp16)", "Adam second moments, factored (Adafactor row/column means)")
DROPPED = ("Adam first moments", "batch sampler and RNG state")


class TrainingStateError(ValueError):
    """A training state that is missing, corrupt (hash mismatch) or does not fit the model being trained."""


def state_file_name(model_id: str) -> str:
    return f"{model_id}.train.safetensors"


# ---- Adam second moments, factored ---------------------------------------------------------------------------
def factor(v: torch.Tensor) -> dict[str, torch.Tensor]:
    v = v.detach().float().cpu()
    if v.ndim < 2:
        return {"full": v.clone()}
    m = v.reshape(v.shape[0], -1)
    return {"row": m.mean(dim=1), "col": m.mean(dim=0)}


def unfactor(parts: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    if "full" in parts:
        return parts["full"].float().reshape(shape).clone()
    row, col = parts["row"].float(), parts["col"].float()
    mean = row.mean().clamp_min(1e-30)
    return (torch.outer(row, col) / mean).reshape(shape)


def adam_moments(opt: torch.optim.Optimizer, named: Iterable[tuple[str, torch.nn.Parameter]], prefix: str
                 ) -> dict[str, torch.Tensor]:
    """``adam/<prefix>/<param>/{row,col,full}`` for every parameter of ``named`` that has a second moment."""
    out = {}
    for name, p in named:
        st = opt.state.get(p, {})
        if "exp_avg_sq" in st:
            for part, t in factor(st["exp_avg_sq"]).items():
                out[f"adam/{prefix}/{name}/{part}"] = t.contiguous()
    return out


def restore_adam(opt: torch.optim.Optimizer, named: Iterable[tuple[str, torch.nn.Parameter]], prefix: str,
                 tensors: dict[str, torch.Tensor], step: int) -> int:
    """Seed ``opt``'s state from the factored second moments (first moments zero, Adam's step count =
    ``step``); returns how many parameters were restored."""
    fused = any(g.get("fused") or g.get("capturable") for g in opt.param_groups)
    n = 0
    for name, p in named:
        key = f"adam/{prefix}/{name}/"
        parts = {k[len(key):]: v for k, v in tensors.items() if k.startswith(key)}
        if not parts:
            continue
        v = unfactor(parts, p.shape).to(p.device, torch.float32)
        step_t = torch.tensor(float(step), dtype=torch.float32, device=p.device if fused else "cpu")
        opt.state[p] = {"step": step_t, "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": v.to(p.dtype)}
        n += 1
    return n


# ---- the file -----------------------------------------------------------------------------------------------
@dataclass
class TrainingState:
    """What a shipped model's training state holds (see the module docstring)."""

    family: str
    step: int
    nimg: int
    train_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # aug_p, configs, data spec ...
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def nets(self, name: str) -> dict[str, torch.Tensor]:
        prefix = f"net/{name}/"
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def meta(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "family": self.family, "step": int(self.step), "nimg": int(self.nimg),
                "train_seconds": round(float(self.train_seconds), 1), "kept": list(KEPT), "dropped": list(DROPPED),
                **self.extra}


def net_tensors(name: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``net/<name>/<key>`` fp16 (floating) / as-is (integer) copies of ``module``'s state dict, on CPU."""
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        out[f"net/{name}/{k}"] = (v.half() if v.is_floating_point() else v).contiguous()
    return out


def save_state(path: str | Path, state: TrainingState) -> dict[str, Any]:
    """Write the state atomically; returns its descriptor entry ``{"file", "sha256", "bytes", "step", "nimg"}``.
    Refuses to write a file over :data:`MAX_FILE_BYTES`."""
    import os

    from safetensors.torch import save_file

    from services.generator.registry import sha256_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state.tensors, str(tmp), metadata={"synthrad_state": json.dumps(state.meta())})
    size = tmp.stat().st_size
    if size > MAX_FILE_BYTES:
        tmp.unlink()
        raise TrainingStateError(f"training state of {state.family} would be {size / 1e6:.1f} MB, over the "
                                 f"{MAX_FILE_BYTES / 1e6:.0f} MB a shipped file may have")
    os.replace(tmp, path)
    return {"file": path.name, "sha256": sha256_file(path), "bytes": size, "step": int(state.step),
            "nimg": int(state.nimg)}


def load_state(path: str | Path, sha256: str | None = None) -> TrainingState:
    """Read a training state, verifying ``sha256`` when given."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from services.generator.registry import sha256_file

    path = Path(path)
    if not path.exists():
        raise TrainingStateError(f"training state {path.name} not found beside the model")
    if sha256 and sha256_file(path) != sha256:
        raise TrainingStateError(f"training state {path.name} does not match the sha256 in the descriptor "
                                 "(corrupt or replaced); re-export the model")
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("synthrad_state", "{}"))
    if meta.get("format") != STATE_FORMAT:
        raise TrainingStateError(f"{path.name} is not a synthrad training state ({STATE_FORMAT})")
    tensors = load_file(str(path))
    extra = {k: v for k, v in meta.items()
             if k not in ("format", "family", "step", "nimg", "train_seconds", "kept", "dropped")}
    return TrainingState(family=meta["family"], step=int(meta["step"]), nimg=int(meta["nimg"]),
                         train_seconds=float(meta.get("train_seconds", 0.0)), extra=extra, tensors=tensors)


@dataclass(frozen=True)
class ShippedModel:
    """A model to continue: its descriptor, the folder it lives in, and its training state (None: none shipped)."""

    descriptor: dict[str, Any]
    folder: Path
    state: TrainingState | None

    @property
    def weights(self) -> Path:
        return self.folder / self.descriptor["weights"]


def open_shipped(ref: str, family: str) -> ShippedModel:
    """``ref`` = a registered model id / alias, or a descriptor JSON path; checks the family and verifies the
    weights' and the state's hashes."""
    from services.generator import registry

    p = Path(ref)
    if p.suffix == ".json" and p.exists():
        desc, folder = json.loads(p.read_text()), p.parent
        weights = folder / desc["weights"]
        if desc.get("sha256") and registry.sha256_file(weights) != desc["sha256"]:
            raise TrainingStateError(f"weights of {desc['model_id']} do not match their sha256")
    else:
        try:
            desc, weights = registry.resolve(ref)  # verifies the weights' sha256
        except registry.GeneratorError as e:
            raise TrainingStateError(f"--resume-from {ref!r}: {e}") from None
        folder = weights.parent
    if desc.get("family") != family:
        raise TrainingStateError(f"--resume-from {ref!r} is a {desc.get('family')} model, not {family}")
    entry = desc.get("training_state")
    state = load_state(Path(folder) / entry["file"], entry.get("sha256")) if entry else None
    return ShippedModel(desc, Path(folder), state)
