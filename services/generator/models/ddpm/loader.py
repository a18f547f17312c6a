"""Registry entry point of the ``ddpm`` family and its :class:`LoadedGenerator`.

Descriptor (``services/generator/weights/<model_id>.json``)::

    {"model_id": "ddpm-cxr64", "family": "ddpm", "weights": "ddpm-cxr64.safetensors", "resolution": 64,
     "card": "ddpm-cxr64.md", "sha256": "...",
     "config": {"unet": {...UNet2DModel kwargs...}, "schedule": {...DDPMScheduler kwargs...},
                "defaults": {"sampler": "dpmpp", "steps": 20, "guidance": 2.0}}}
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from services.common.findings import Condition
from services.generator.backends.micro_batch import in_fixed_micro_batches, micro_batch_size
from services.generator.base import (GenerationParams, GeneratorError, LoadedGenerator, canonical_sampler,
                                     to_unit_images)

from .model import DEFAULT_SCHEDULE, ConditionalUNet, load_weights
from .sampling import sample

DEFAULTS = {"sampler": "dpmpp", "steps": 20, "guidance": 2.0}
ONNX_OPSET = 17
UNET_INPUTS = ("sample", "timestep", "codes")


#: Images per UNet call by default (``settings.runtime.ddpm_micro_batch`` overrides; 0 = default). CPU: 4,
#: measured through a stored batch job (benchmarks/bench_cpu_inference.py, RESULTS-inference.md): on the
#: 2-core VM the UNet is compute-bound, per-row cost is the same at 4 and 8 images (UNet batch 8 / 16 with
#: guidance) and no better at 16, and a 1-image request pays for every padded row.
CUDA_MICRO_BATCH = 32
CPU_MICRO_BATCH = 4


def default_micro_batch(device: str) -> int:
    """Images per UNet call (x2 with guidance): ``settings.runtime.ddpm_micro_batch``, else 32 on CUDA, 4 on
    CPU."""
    from services.common.config import get_settings

    return micro_batch_size(get_settings().runtime.ddpm_micro_batch, device, cuda=CUDA_MICRO_BATCH,
                            cpu=CPU_MICRO_BATCH)


def unet_runner(model: ConditionalUNet, backend: str, device: str, model_hash: str = "", *,
                compile_mode: str | None = None, cache_dir=None):
    """``denoise(x, t, codes) -> eps`` for ``backend`` (:func:`services.generator.backends.build_runner`);
    the ONNX export is cached per model hash (without one it is exported on every call)."""
    from services.generator.backends import build_runner

    r = model.resolution
    g = torch.Generator().manual_seed(0)  # ONNX export example inputs (values do not matter, shapes do)
    examples = (torch.randn(2, 1, r, r, generator=g), torch.tensor([10.0, 500.0]),
                torch.tensor([[0, 1, 2, 0], [2, 2, 2, 2]]))
    return build_runner(model, examples, UNET_INPUTS, backend, device, output_names=("eps",),
                        fp32_inputs=("timestep",), dynamic=False, compile_mode=compile_mode, cache_dir=cache_dir,
                        opset=ONNX_OPSET, onnx_name="ddpm-unet",
                        onnx_key=f"ddpm|{model_hash}|opset{ONNX_OPSET}" if model_hash else None)


class DDPMGenerator(LoadedGenerator):
    family = "ddpm"
    text_conditioned = False
    uses_params = frozenset({"steps", "sampler", "guidance", "resolution"})

    def __init__(self, model: ConditionalUNet, *, model_id: str, model_hash: str, backend: str, device: str,
                 schedule: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
                 micro_batch: int | None = None):
        from services.generator.backends import resolve_backend, resolve_device

        self.model_id = model_id
        self.model_hash = model_hash
        self.device = resolve_device(device)
        self.backend = resolve_backend(backend, self.device)
        self.resolution = model.resolution
        self.schedule = dict(schedule or DEFAULT_SCHEDULE)
        self.defaults = {**DEFAULTS, **(defaults or {})}
        # Every UNet call has exactly ``micro_batch`` images (the last micro-batch is padded,
        # services.generator.backends.micro_batch): with a fixed shape the kernels compute each row
        # identically wherever it sits, so an image's pixels are bit-identical whatever else shares its request
        # (batch-size-dependent kernel choice would differ by ~1e-6).
        self.micro_batch = int(micro_batch or default_micro_batch(self.device))
        self.denoise = unet_runner(model, self.backend, self.device, model_hash)
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

    def generate(self, conditions: Sequence[Condition], seeds: Sequence[int], params: GenerationParams | None = None,
                 prompts: Sequence[str | None] | None = None, callback=None) -> np.ndarray:
        self.check_inputs(conditions, seeds, prompts)
        sampler, steps, guidance = self.resolve_params(params)
        out_res = (params.resolution if params and params.resolution else self.resolution)
        if not seeds:
            return np.zeros((0, out_res, out_res), np.float32)

        def run(conds: list[Condition], sds: list[int]) -> np.ndarray:  # exactly self.micro_batch images
            codes = torch.tensor([c.codes() for c in conds], dtype=torch.long)
            x = sample(self._denoise_counted, codes, sds, resolution=self.resolution, schedule=self.schedule,
                       sampler=sampler, steps=steps, guidance=guidance, device=self.device, callback=callback)
            if out_res != self.resolution:
                x = torch.nn.functional.interpolate(x.float(), size=(out_res, out_res), mode="bilinear",
                                                    antialias=out_res < self.resolution, align_corners=False)
            return to_unit_images(x)

        return in_fixed_micro_batches(run, conditions, seeds, self.micro_batch)


def load(descriptor: dict, weights_path: Path, backend: str = "auto", device: str = "cpu") -> DDPMGenerator:
    """Registry loader: ``load(descriptor, weights_path, backend, device)``."""
    from services.generator.registry import weights_hash

    cfg = descriptor.get("config") or {}
    if "unet" not in cfg:
        raise GeneratorError(f"descriptor of {descriptor.get('model_id')!r} has no config.unet")
    model = ConditionalUNet(cfg["unet"])
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
