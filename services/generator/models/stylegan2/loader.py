"""Load a StyleGAN2 descriptor + safetensors weights as a :class:`LoadedGenerator`; save trained weights.

Determinism: image ``i`` is drawn from ``torch.Generator().manual_seed(seeds[i])`` on CPU — first ``z``
(z_dim normals), then the per-layer noise maps (``GeneratorExport.noise_dim()`` normals, in layer order) —
so it depends only on its own seed, condition and params. Noise is passed to every backend as an explicit
input (the ONNX graph has no random ops). Every forward pass has ``micro_batch`` images (the last one padded,
see ``CPU_MICRO_BATCH``), so the pixels are also bit-identical whatever else shares the request.

Truncation (``params.truncation`` = psi, default from the descriptor, 1.0 = none) moves ``w`` toward the
**per-condition mean** ``w`` (mean of the mapping over 2048 fixed ``z`` for that condition, computed once per
condition in fp32 eager and cached), not the global ``w_avg``: truncating toward the global mean of a
conditional model washes the condition out. ``config.truncation_center = "global"`` in the descriptor
switches to ``w_avg``; unconditional (imported) models always use ``w_avg``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from services.common.findings import FINDINGS, Condition
from services.generator.backends.micro_batch import in_fixed_micro_batches, micro_batch_size
from services.generator.base import GenerationParams, GeneratorError, LoadedGenerator, to_unit_images

from .network import Generator, GeneratorExport, StyleGAN2Config, encode_conditions

CENTER_SAMPLES = 2048
CENTER_SEED = 0x5EED
# Every forward pass has exactly ``micro_batch`` images (the last micro-batch of a request is padded,
# services.generator.backends.micro_batch): oneDNN and ONNX Runtime pick kernels by shape (batch-size dependent
# differences ~1e-6), and with one shape an image's pixels are bit-identical whatever else shares its request.
# Defaults (``settings.runtime.stylegan2_micro_batch`` overrides; 0 = default): CUDA 64; CPU 4, measured
# through a stored batch job (benchmarks/bench_cpu_inference.py, RESULTS-inference.md): with ONNX Runtime the
# per-image cost on the shared 2-core VM is flat within noise (+-3 %) from 1 to 16 (an idler earlier run of
# bench_generator.py: +4 % at 8, +11 % at 32), a request's chunk (serve.generator_max_batch_size, 16) splits
# into whole micro-batches, and a 1-image request pays for only 4.
CUDA_MICRO_BATCH = 64
CPU_MICRO_BATCH = 4


def default_micro_batch(device: str) -> int:
    """Images per forward pass: ``settings.runtime.stylegan2_micro_batch``, else 64 on CUDA, 4 on CPU."""
    from services.common.config import get_settings

    return micro_batch_size(get_settings().runtime.stylegan2_micro_batch, device, cuda=CUDA_MICRO_BATCH,
                            cpu=CPU_MICRO_BATCH)


def load_weights(weights_path: str | Path, config: dict | None = None) -> Generator:
    """Build a :class:`Generator` from a safetensors file (config from ``config`` or the file's metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    weights_path = Path(weights_path)
    if config is None:
        with safe_open(str(weights_path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if "config" not in meta:
            raise GeneratorError(f"{weights_path} has no config metadata; give the descriptor's 'config'")
        config = json.loads(meta["config"])
    cfg = StyleGAN2Config.from_dict(config)
    G = Generator(cfg)
    sd = load_file(str(weights_path))
    missing, unexpected = G.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("resample_filter")]
    if missing or unexpected:
        raise GeneratorError(f"weights {weights_path.name} do not fit the config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return G.eval().requires_grad_(False)


def save_weights(G: Generator, path: str | Path, metadata: dict | None = None,
                 dtype: torch.dtype = torch.float32) -> Path:
    """Write ``G``'s state dict as safetensors (``dtype``: fp16 halves the file; loading casts to fp32)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
          for k, v in G.state_dict().items()}
    meta = {"config": json.dumps(G.cfg.to_dict()), "format": "synthrad-stylegan2-v1"}
    meta.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()})
    save_file(sd, str(path), metadata=meta)
    return path


def seed_inputs(seed: int, z_dim: int, noise_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The random inputs of one image: ``(z (z_dim,), noise (noise_dim,))`` from its seed alone."""
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(z_dim, generator=g)
    noise = torch.randn(noise_dim, generator=g)
    return z, noise


class StyleGAN2Generator(LoadedGenerator):
    family = "stylegan2"
    uses_params = frozenset({"truncation", "resolution"})

    def resolved_params(self, params: GenerationParams | None) -> dict:
        return {"truncation": self.default_truncation, **super().resolved_params(params)}

    def __init__(self, G: Generator, model_id: str, model_hash: str, backend: str = "auto", device: str = "cpu",
                 default_truncation: float = 1.0, truncation_center: str = "condition", cache_dir=None,
                 fp16: bool | None = None, compile_mode: str | None = None, micro_batch: int | None = None):
        from services.generator.backends import build_runner, resolve_backend, resolve_device

        self.G = G.float().cpu().eval().requires_grad_(False)
        self.cfg = G.cfg
        self.model_id, self.model_hash = model_id, model_hash
        self.device = resolve_device(device)
        self.backend = resolve_backend(backend, self.device)
        self.resolution = self.cfg.resolution
        self.default_truncation = float(default_truncation)
        self.truncation_center = truncation_center if self.cfg.c_dim > 0 else "global"
        self.micro_batch = int(micro_batch or default_micro_batch(self.device))
        self.export = GeneratorExport(self.G).eval()
        self.noise_dim = self.export.noise_dim()
        self._centers: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        ex = self._inputs([Condition()], [0], 1.0)  # export example (dynamic batch axis)
        self.runner = build_runner(self.export, ex, GeneratorExport.input_names, self.backend, self.device,
                                   output_names=("img",), cache_dir=cache_dir, fp16=fp16,
                                   onnx_key=f"stylegan2|{model_hash}|{json.dumps(self.cfg.to_dict(), sort_keys=True)}",
                                   onnx_name=f"stylegan2-{model_id}", compile_mode=compile_mode)
        self.precision = self.runner.precision

    # -- inputs -----------------------------------------------------------------------------------------
    def condition_vector(self, conditions: Sequence[Condition]) -> torch.Tensor:
        if self.cfg.c_dim == 0:
            return torch.zeros(len(conditions), 0)
        codes = torch.tensor([c.codes() for c in conditions], dtype=torch.long)
        return encode_conditions(codes, self.cfg.num_findings)

    @torch.no_grad()
    def w_center(self, condition: Condition) -> torch.Tensor:
        """Truncation centre for ``condition`` (fp32, CPU; cached)."""
        if self.truncation_center == "global":
            return self.G.mapping.w_avg.detach().float().clone()
        key = condition.key()
        with self._lock:
            if key not in self._centers:
                g = torch.Generator().manual_seed(CENTER_SEED)
                z = torch.randn(CENTER_SAMPLES, self.cfg.z_dim, generator=g)
                c = self.condition_vector([condition] * CENTER_SAMPLES)
                self._centers[key] = self.G.mapping(z, c).mean(0)
            return self._centers[key]

    def _inputs(self, conditions, seeds, psi: float):
        zs, ns = zip(*(seed_inputs(s, self.cfg.z_dim, self.noise_dim) for s in seeds))
        z = torch.stack(zs)
        noise = torch.stack(ns)
        c = self.condition_vector(conditions)
        if psi == 1.0:
            center = torch.zeros(len(seeds), self.cfg.w_dim)
        else:
            center = torch.stack([self.w_center(cond) for cond in conditions])
        psi_t = torch.full((len(seeds), 1), float(psi))
        return z, c, center, psi_t, noise

    # -- API --------------------------------------------------------------------------------------------
    def generate(self, conditions: Sequence[Condition], seeds: Sequence[int], params: GenerationParams | None = None,
                 prompts: Sequence[str | None] | None = None) -> np.ndarray:
        self.check_inputs(conditions, seeds, prompts)
        params = params or GenerationParams()
        psi = self.default_truncation if params.truncation is None else float(params.truncation)
        out_res = params.resolution or self.resolution
        if out_res > self.resolution * 4 or out_res < 16:
            raise GeneratorError(f"model {self.model_id} makes {self.resolution}px images; "
                                 f"resolution {out_res} is not a supported resize (16..{self.resolution * 4})")
        if not seeds:
            return np.zeros((0, out_res, out_res), np.float32)

        def run(conds: list[Condition], sds: list[int]) -> np.ndarray:  # exactly self.micro_batch images
            img = self.runner(*self._inputs(conds, sds, psi)).float().cpu()
            if img.shape[1] == 3:  # imported RGB generators: luminance
                img = (0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]).unsqueeze(1)
            if out_res != self.resolution:
                img = F.interpolate(img, size=(out_res, out_res), mode="bilinear", align_corners=False,
                                    antialias=out_res < self.resolution)
            return to_unit_images(img)

        return in_fixed_micro_batches(run, conditions, seeds, self.micro_batch)

    def raw(self, conditions: Sequence[Condition], seeds: Sequence[int], psi: float = 1.0) -> torch.Tensor:
        """Model-space output (N, C, R, R) in ~[-1, 1] (for tests / metrics), in the same fixed micro-batches
        as :meth:`generate`."""
        self.check_inputs(conditions, seeds, None)
        if not seeds:
            return torch.zeros(0, self.cfg.img_channels, self.resolution, self.resolution)
        out = in_fixed_micro_batches(lambda c, s: self.runner(*self._inputs(c, s, psi)).float().cpu().numpy(),
                                     conditions, seeds, self.micro_batch)
        return torch.from_numpy(out)


def load(descriptor: dict, weights_path: Path, backend: str = "auto", device: str = "cpu") -> StyleGAN2Generator:
    """Registry entry point (``registry.FAMILIES['stylegan2']``)."""
    from services.generator.registry import weights_hash

    cfg = descriptor.get("config")
    G = load_weights(weights_path, cfg)
    if int(descriptor.get("resolution", G.cfg.resolution)) != G.cfg.resolution:
        raise GeneratorError(f"descriptor resolution {descriptor.get('resolution')} != weights {G.cfg.resolution}")
    if G.cfg.num_findings not in (0, len(FINDINGS)):
        raise GeneratorError(f"model conditions on {G.cfg.num_findings} findings; synthrad has {len(FINDINGS)}")
    gen_cfg = descriptor.get("generation", {})
    return StyleGAN2Generator(
        G, model_id=descriptor["model_id"], model_hash=descriptor.get("sha256") or weights_hash(weights_path),
        backend=backend, device=device, default_truncation=float(gen_cfg.get("truncation", 1.0)),
        truncation_center=gen_cfg.get("truncation_center", "condition"),
    )
