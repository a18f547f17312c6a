"""Class-conditional pixel-space UNet: a diffusers ``UNet2DModel`` plus a factored condition embedding.

Condition design (why not ``num_class_embeds=81``): a condition is four findings x three states
(absent / present / unspecified).  We embed each (finding, state) pair separately — a 12-row table,
one 3-row block per finding — sum the four vectors and pass the sum through a small MLP into the
UNet's time-embedding space (``class_embed_type="identity"``, so the UNet adds our vector to the
timestep embedding).  Compared with one embedding per combination this

* shares statistics across combinations: most of the 81 combinations are rare or absent in a
  ~1k-image dataset, but every combination is built from pieces seen thousands of times;
* gives partial conditions a meaning: "effusion present, the rest unspecified" is a learned input,
  trained by dropping single findings to "unspecified" (per-finding condition dropout);
* makes the classifier-free-guidance null condition simply "all four unspecified" — trained by
  whole-condition dropout — so no extra null token is needed;
* exports to ONNX as a Gather + two Linear layers (the codes are an int64 ``(B, 4)`` input).

The MLP after the sum lets findings interact (e.g. effusion + cardiomegaly is not just the sum).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from services.common.findings import FINDINGS, UNSPECIFIED_CODE

N_FINDINGS = len(FINDINGS)
N_STATES = 3

#: UNet presets (``UNet2DModel`` kwargs). "cxr64" is the shipped model (~7.9 M parameters).
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "cxr64": dict(
        block_out_channels=[32, 64, 128, 160],
        layers_per_block=2,
        down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        norm_num_groups=16,
        attention_head_dim=32,
    ),
    # 128 px (Kermany): one more level, attention at 16 px; ~9.4 M parameters (fp16 weights 18.7 MB)
    "cxr128": dict(
        block_out_channels=[32, 64, 96, 128, 160],
        layers_per_block=2,
        down_block_types=["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
        norm_num_groups=16,
        attention_head_dim=32,
    ),
    "small": dict(
        block_out_channels=[32, 64, 96],
        layers_per_block=1,
        down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        norm_num_groups=16,
        attention_head_dim=32,
    ),
    # For tests: a few thousand parameters, still with an attention block so ONNX export covers it.
    "tiny": dict(
        block_out_channels=[16, 32],
        layers_per_block=1,
        down_block_types=["DownBlock2D", "AttnDownBlock2D"],
        up_block_types=["AttnUpBlock2D", "UpBlock2D"],
        norm_num_groups=8,
        attention_head_dim=8,
    ),
}

#: Training noise schedule (diffusers ``DDPMScheduler`` kwargs); samplers are built from it.
DEFAULT_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "epsilon",
}


def unet_config(preset: str | dict[str, Any], resolution: int) -> dict[str, Any]:
    """Full ``UNet2DModel`` kwargs for a preset name (or an explicit dict) at ``resolution``."""
    if isinstance(preset, str):
        if preset not in UNET_PRESETS:
            raise ValueError(f"unknown UNet preset {preset!r}; choose one of {', '.join(UNET_PRESETS)}")
        cfg = copy.deepcopy(UNET_PRESETS[preset])
    else:
        cfg = copy.deepcopy(dict(preset))
    levels = len(cfg["block_out_channels"])
    if resolution % (2 ** (levels - 1)):
        raise ValueError(f"resolution {resolution} must be divisible by {2 ** (levels - 1)} for this UNet")
    cfg.update(sample_size=resolution, in_channels=1, out_channels=1, class_embed_type="identity")
    return cfg


class ConditionEmbedding(nn.Module):
    """codes ``(B, 4)`` int64 in {0 absent, 1 present, 2 unspecified} -> ``(B, dim)``."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.table = nn.Embedding(N_FINDINGS * N_STATES, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.register_buffer("offsets", torch.arange(N_FINDINGS, dtype=torch.long) * N_STATES, persistent=False)
        # Unit-variance rows (nn.Embedding's default, as diffusers' class embeddings): with the small init of
        # earlier releases (std 0.02) every condition mapped to nearly the same vector, the UNet learned to
        # ignore it and the table barely moved in training (ddpm-cxr64: row std still 0.023 after 1,843 steps,
        # eps(cond) - eps(null) ~ 3e-4), so guidance and condition did nothing measurable.
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        idx = codes.long() + self.offsets
        return self.mlp(self.table(idx).sum(dim=1))


class ConditionalUNet(nn.Module):
    """``forward(sample (B,1,R,R), timestep (B,), codes (B,4)) -> predicted noise (B,1,R,R)``."""

    def __init__(self, unet_kwargs: dict[str, Any]):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet_kwargs = dict(unet_kwargs)
        self.unet = UNet2DModel(**unet_kwargs)
        dim = self.unet.time_embedding.linear_2.out_features
        self.cond = ConditionEmbedding(dim)

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        emb = self.cond(codes)
        return self.unet(sample, timestep, class_labels=emb, return_dict=False)[0]


def null_codes(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The classifier-free-guidance null condition: every finding unspecified."""
    return torch.full((n, N_FINDINGS), UNSPECIFIED_CODE, dtype=torch.long, device=device)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model: nn.Module, path, dtype: torch.dtype = torch.float16, metadata: dict[str, str] | None = None) -> None:
    """Write the state dict as safetensors (fp16 by default to keep the shipped file small)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata=metadata or {})


def load_weights(model: nn.Module, path) -> None:
    from safetensors.torch import load_file

    sd = load_file(str(path))
    ref = model.state_dict()
    sd = {k: v.to(ref[k].dtype) if k in ref else v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights {path} do not match the model config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
