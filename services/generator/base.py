"""The generator interface every model family implements (pure Python/torch, no Ray).

Determinism contract: image ``i`` of a call depends only on the model weights, ``seeds[i]``,
``conditions[i]`` (and ``prompts[i]``), the generation params and the backend — never on which other
images share the batch. Implementations draw each image's noise from its own ``torch.Generator``
seeded with ``seeds[i]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.common.findings import Condition


class GenerationParams(BaseModel):
    """Per-request knobs. ``None`` means the model's default. Families ignore what they do not use."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int | None = Field(None, ge=1, le=1000, description="Sampler steps (diffusion).")
    sampler: str | None = Field(None, description="ddpm | ddim | dpmpp (diffusion).")
    guidance: float | None = Field(None, ge=0.0, le=50.0, description="Classifier-free guidance scale (diffusion).")
    truncation: float | None = Field(None, ge=0.0, le=2.0, description="Truncation psi (StyleGAN2).")
    resolution: int | None = Field(None, ge=16, le=1024, description="Output size; must match the model or be a supported resize.")

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one forward pass."""
        return (self.steps, self.sampler, self.guidance, self.truncation, self.resolution)


class ModelInfo(BaseModel):
    model_id: str
    family: str
    resolution: int
    model_hash: str
    text_conditioned: bool = False
    description: str = ""
    card: str | None = None  # model card markdown (filled by the registry)


class GeneratorError(ValueError):
    """Invalid generation request for this model (maps to 4xx / INVALID_ARGUMENT)."""


class LoadedGenerator(ABC):
    """A model loaded on a device with a backend, ready to generate."""

    model_id: str
    model_hash: str
    family: str
    backend: str
    device: str
    resolution: int
    text_conditioned: bool = False

    @abstractmethod
    def generate(
        self,
        conditions: Sequence[Condition],
        seeds: Sequence[int],
        params: GenerationParams | None = None,
        prompts: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Return ``(N, H, W)`` float32 images in [0, 1], one per (condition, seed)."""

    def info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self.model_id,
            family=self.family,
            resolution=self.resolution,
            model_hash=self.model_hash,
            text_conditioned=self.text_conditioned,
        )

    @staticmethod
    def check_inputs(conditions: Sequence[Condition], seeds: Sequence[int], prompts: Sequence[str | None] | None) -> None:
        if len(conditions) != len(seeds):
            raise GeneratorError(f"got {len(conditions)} conditions for {len(seeds)} seeds; give one per image")
        if prompts is not None and len(prompts) != len(seeds):
            raise GeneratorError(f"got {len(prompts)} prompts for {len(seeds)} seeds; give one per image")
        for s in seeds:
            if not 0 <= int(s) < 2**63:
                raise GeneratorError(f"seed {s} out of range [0, 2**63)")


def to_unit_images(x) -> np.ndarray:
    """Model output tensor (N, 1, H, W) in [-1, 1] -> numpy (N, H, W) float32 in [0, 1]."""
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, 0]
    return np.clip((x + 1.0) * 0.5, 0.0, 1.0)
