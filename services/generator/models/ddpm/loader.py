"""Registry entry point of the ``ddpm`` family and its :class:`LoadedGenerator`.

Descriptor (``services/generator/weights/<model_id>.json``)::

    {"model_id": "ddpm-cxr64", "family": "ddpm", "weights": "ddpm-cxr64.safetensors", "resolution": 64,
     "card": "ddpm-cxr64.md", "sha256": "...",
     "config": {"unet": {...UNet2DModel kwargs...}, "schedule": {...DDPMScheduler kwargs...},
                "defaults": {"sampler": "dpmpp", "steps": 20, "guidance": 2.0}}}
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from services.common.findings import Condition
from services.generator.base import GenerationParams, GeneratorError, LoadedGenerator, to_unit_images

from .model import DEFAULT_SCHEDULE, ConditionalUNet, load_weights
from .runtime import make_denoiser
from .sampling import canonical_sampler, sample

DEFAULTS = {"sampler": "dpmpp", "steps": 20, "guidance": 2.0}


def default_micro_batch(device: str) -> int:
    """Images per UNet call (x2 with guidance). Env ``SYNTHRAD_DDPM_MICRO_BATCH`` overrides."""
    env = os.environ.get("SYNTHRAD_DDPM_MICRO_BATCH")
    if env:
        return max(1, int(env))
    return 32 if torch.device(device).type == "cuda" else 4


class DDPMGenerator(LoadedGenerator):
    family = "ddpm"
    text_conditioned = False
    uses_params = frozenset({"steps", "sampler", "guidance", "resolution"})

    def __init__(self, model: ConditionalUNet, *, model_id: str, model_hash: str, backend: str, device: str,
                 schedule: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
                 onnx_path: str | Path | None = None, micro_batch: int | None = None):
        self.model_id = model_id
        self.model_hash = model_hash
        self.device = device
        self.resolution = model.resolution
        self.schedule = dict(schedule or DEFAULT_SCHEDULE)
        self.defaults = {**DEFAULTS, **(defaults or {})}
        # Every UNet call has exactly ``micro_batch`` rows (the last chunk is padded): with a fixed shape the
        # kernels compute each row identically wherever it sits, so an image's pixels are bit-identical
        # whatever else shares its request (batch-size-dependent kernel choice would differ by ~1e-6).
        self.micro_batch = int(micro_batch or default_micro_batch(device))
        if backend == "auto":
            backend = "eager"  # compile/onnx are opt-in: their first call pays a compile/export
        self.backend = backend
        self.denoise = make_denoiser(model, backend, device, model_hash=model_hash, onnx_path=onnx_path)
        self._count_lock = threading.Lock()
        self.unet_calls = 0  # diagnostics (tests count steps)

    def _denoise_counted(self, x, t, codes):
        with self._count_lock:
            self.unet_calls += 1
        return self.denoise(x, t, codes)

    def resolve_params(self, params: GenerationParams | None) -> tuple[str, int, float]:
        p = params or GenerationParams()
        try:
            sampler = canonical_sampler(p.sampler or self.defaults["sampler"])
        except ValueError as e:
            raise GeneratorError(str(e)) from e
        steps = int(p.steps or self.defaults["steps"])
        num_train = int(self.schedule.get("num_train_timesteps", 1000))
        if steps > num_train:
            raise GeneratorError(f"steps must be <= {num_train} for model {self.model_id!r}, got {steps}")
        guidance = float(self.defaults["guidance"] if p.guidance is None else p.guidance)
        return sampler, steps, guidance

    def resolved_params(self, params: GenerationParams | None) -> dict:
        sampler, steps, guidance = self.resolve_params(params)
        return {**super().resolved_params(params), "sampler": sampler, "steps": steps, "guidance": guidance}

    def conditions_from_prompts(self, conditions: Sequence[Condition], prompts: Sequence[str | None] | None) -> list[Condition]:
        """A prompt is parsed (common parser) for images whose condition is left fully unspecified."""
        out = list(conditions)
        if prompts is None:
            return out
        from services.common.prompts import parse_prompt

        for i, (c, p) in enumerate(zip(conditions, prompts)):
            if p and all(code == 2 for code in c.codes()):
                out[i] = parse_prompt(p)
        return out

    def generate(self, conditions: Sequence[Condition], seeds: Sequence[int], params: GenerationParams | None = None,
                 prompts: Sequence[str | None] | None = None, callback=None) -> np.ndarray:
        self.check_inputs(conditions, seeds, prompts)
        sampler, steps, guidance = self.resolve_params(params)
        out_res = (params.resolution if params and params.resolution else self.resolution)
        conds = self.conditions_from_prompts(conditions, prompts)
        if not seeds:
            return np.zeros((0, out_res, out_res), np.float32)
        codes = torch.tensor([c.codes() for c in conds], dtype=torch.long)
        mb = self.micro_batch
        chunks = []
        for s in range(0, len(seeds), mb):
            c = codes[s:s + mb]
            sd = [int(v) for v in seeds[s:s + mb]]
            n = len(sd)
            if n < mb:  # pad to the fixed shape; padding rows are discarded
                c = torch.cat([c, torch.full((mb - n, 4), 2, dtype=torch.long)], dim=0)
                sd = sd + [0] * (mb - n)
            x = sample(self._denoise_counted, c, sd, resolution=self.resolution, schedule=self.schedule,
                       sampler=sampler, steps=steps, guidance=guidance, device=self.device, callback=callback)[:n]
            if out_res != self.resolution:
                x = torch.nn.functional.interpolate(x.float(), size=(out_res, out_res), mode="bilinear",
                                                    antialias=out_res < self.resolution, align_corners=False)
            chunks.append(to_unit_images(x))
        return np.concatenate(chunks, axis=0)


def build_model(config: dict[str, Any]) -> ConditionalUNet:
    return ConditionalUNet(config["unet"])


def load(descriptor: dict, weights_path: Path, backend: str = "auto", device: str = "cpu") -> DDPMGenerator:
    """Registry loader: ``load(descriptor, weights_path, backend, device)``."""
    from services.generator.registry import weights_hash

    cfg = descriptor.get("config") or {}
    if "unet" not in cfg:
        raise GeneratorError(f"descriptor of {descriptor.get('model_id')!r} has no config.unet")
    model = build_model(cfg)
    try:
        load_weights(model, weights_path)
    except ValueError as e:
        raise GeneratorError(str(e)) from e
    model.eval()
    model_hash = descriptor.get("sha256") or weights_hash(Path(weights_path))
    return DDPMGenerator(
        model, model_id=descriptor["model_id"], model_hash=model_hash, backend=backend, device=device,
        schedule=cfg.get("schedule"), defaults=cfg.get("defaults"),
    )
