"""Text-conditioned latent diffusion from a local Stable-Diffusion-format diffusers folder (RoentGen-style).

Descriptor (in a ``SYNTHRAD_MODEL_DIRS`` folder)::

    {"model_id": "roentgen", "family": "latent_diffusion", "weights": "/models/roentgen",
     "sha256": "<registry.weights_hash of the folder>", "resolution": 512, "text_conditioned": true,
     "config": {"sampler": "dpmpp", "steps": 25, "guidance": 4.0}}

:func:`make_descriptor` computes the hash and writes such a file; :func:`load_path` loads a folder
directly (``--model-path DIR``).  Nothing is fetched from the hub (``local_files_only=True``).
The raw prompt goes to the pipeline's text encoder; when an image has no prompt, its condition's
``describe()`` text is used ("pleural effusion; no atelectasis").  Output is the RGB image's mean
channel in [0, 1].  Backends (:mod:`services.generator.backends`): ``eager`` and ``compile`` (the UNet);
``auto`` is eager on CPU, compile on CUDA; on CUDA the pipeline runs fp16 (``config.fp16: false``: fp32).
"""

from __future__ import annotations

import copy
import json
import queue
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from services.common.findings import Condition
from services.generator.base import GenerationParams, GeneratorError, LoadedGenerator, canonical_sampler
from services.generator.models import schedulers

DEFAULTS = {"sampler": "dpmpp", "steps": 25, "guidance": 4.0}


class HashMismatch(GeneratorError):
    pass


def verify_folder(path: Path, expected: str | None) -> str:
    """sha256 of the folder (``registry.weights_hash``); raises :class:`HashMismatch` if it differs."""
    from services.generator.registry import weights_hash

    path = Path(path)
    if not path.is_dir() or not (path / "model_index.json").exists():
        raise GeneratorError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    got = weights_hash(path)
    if expected and got != expected.lower():
        raise HashMismatch(
            f"checkpoint folder {path} has sha256 {got}, but its descriptor expects {expected}; refusing to load "
            "a checkpoint that is corrupt, partially copied or not the one the descriptor names "
            "(recompute with services.generator.models.latent_diffusion.loader.make_descriptor if you changed it on purpose)"
        )
    return got


#: Sampler -> scheduler over the checkpoint's own ``scheduler/scheduler_config.json`` (config-as-data).
SAMPLERS: dict[str, schedulers.SamplerSpec] = {
    "ddpm": schedulers.SamplerSpec("DDPMScheduler"),
    "ddim": schedulers.SamplerSpec("DDIMScheduler"),
    "dpmpp": schedulers.SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}
BACKENDS = ("eager", "compile")


def make_scheduler(name: str, base_config: dict[str, Any]):
    """A new scheduler for one request; :class:`GeneratorError` for an unknown sampler."""
    try:
        return schedulers.make_scheduler(SAMPLERS, name, base_config)
    except ValueError as e:
        raise GeneratorError(str(e)) from e


def canonical_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The ``sampler`` / ``steps`` / ``guidance`` defaults of a descriptor ``config``, the sampler checked and
    canonical (:class:`GeneratorError` for one this family does not have)."""
    out = {k: config[k] for k in ("sampler", "steps", "guidance") if config.get(k) is not None}
    if "sampler" in out:
        try:
            out["sampler"] = canonical_sampler(out["sampler"])
        except ValueError as e:
            raise GeneratorError(str(e)) from e
    return out


class LatentDiffusionGenerator(LoadedGenerator):
    family = "latent_diffusion"
    text_conditioned = True
    uses_params = frozenset({"steps", "sampler", "guidance", "resolution"})

    def __init__(self, pipe, *, model_id: str, model_hash: str, backend: str, device: str, resolution: int,
                 defaults: dict[str, Any] | None = None, compiled_unet=None):
        from services.generator.backends import CompileFallback

        self.pipe = pipe
        self.model_id = model_id
        self.model_hash = model_hash
        self.backend = backend
        self.device = device
        self.resolution = int(resolution)
        self.defaults = {**DEFAULTS, **(defaults or {})}
        self._sched_config = dict(pipe.scheduler.config)
        # compile: the request pipelines get the compiled UNet; calls are serialised and fall back to the eager
        # UNet (pipe.unet) if compilation fails (services.generator.backends)
        self._compiled_unet = compiled_unet
        self._fallback = CompileFallback(f"{model_id} UNet") if compiled_unet is not None else None
        # Tokenizers are checked out per request (see _checkout_tokenizer).  The prototype is a private copy
        # that is never called, only copied, so no request can catch it mid-call.
        self._tokenizer_proto = copy.deepcopy(pipe.tokenizer)
        self._tokenizer_proto_lock = threading.Lock()
        self._tokenizers: queue.SimpleQueue = queue.SimpleQueue()

    def resolved_params(self, params: GenerationParams | None) -> dict:
        return {**{k: self.defaults[k] for k in ("sampler", "steps", "guidance")}, **super().resolved_params(params)}

    def _checkout_tokenizer(self):
        """A tokenizer that no other request is using.

        A fast (Rust ``tokenizers``-backed) tokenizer is not safe to share between threads: every call stores
        its padding/truncation strategy on the shared backend object (``set_truncation_and_padding``) and
        then encodes with whatever is stored at that moment.  ``StableDiffusionPipeline.encode_prompt`` calls
        it with ``padding="max_length", truncation=True`` and then ``padding="longest"`` without truncation,
        so a concurrent request could get its prompt padded to a different length (different
        cross-attention context -> different pixels, or a shape error in the CFG concatenation).  Each
        request therefore gets a private copy, reused from a pool (copies = peak concurrency), no lock
        held while sampling.
        """
        try:
            return self._tokenizers.get_nowait()
        except queue.Empty:
            with self._tokenizer_proto_lock:
                return copy.deepcopy(self._tokenizer_proto)

    def _request_pipeline(self, sampler: str, tokenizer, unet=None):
        """A pipeline object for one request sharing the loaded (stateless-in-forward) modules but with its
        own scheduler and tokenizer (scheduler state, the tokenizer's padding/truncation state and the
        pipeline's per-call attributes are per request)."""
        comps = dict(self.pipe.components)
        comps["scheduler"] = make_scheduler(sampler, self._sched_config)
        comps["tokenizer"] = tokenizer
        if unet is not None:
            comps["unet"] = unet
        comps["safety_checker"] = None
        pipe = type(self.pipe)(**comps, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generate(self, conditions: Sequence[Condition], seeds: Sequence[int], params: GenerationParams | None = None,
                 prompts: Sequence[str | None] | None = None) -> np.ndarray:
        self.check_inputs(conditions, seeds, prompts)
        p = params or GenerationParams()
        res = int(p.resolution or self.resolution)
        if res % 8:
            raise GeneratorError(f"resolution must be a multiple of 8 for latent diffusion, got {res}")
        if not seeds:
            return np.zeros((0, res, res), np.float32)
        texts = []
        for i, c in enumerate(conditions):
            text = prompts[i] if prompts is not None else None
            if not text:
                text = "" if all(code == 2 for code in c.codes()) else c.describe()
            texts.append(text)
        sampler = p.sampler or self.defaults["sampler"]
        tokenizer = self._checkout_tokenizer()
        kwargs = dict(prompt=texts, height=res, width=res, num_inference_steps=int(p.steps or self.defaults["steps"]),
                      guidance_scale=float(self.defaults["guidance"] if p.guidance is None else p.guidance),
                      output_type="np")

        def run(unet=None):  # fresh generators per attempt: a failed compiled call must not consume the noise
            gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
            return self._request_pipeline(sampler, tokenizer, unet)(**kwargs, generator=gens).images

        try:
            if self._fallback is None:
                out = run()
            else:
                out = self._fallback(lambda: run(self._compiled_unet), run)
        finally:
            self._tokenizers.put(tokenizer)
        out = np.asarray(out, dtype=np.float32)
        if out.ndim == 4:
            out = out.mean(axis=-1)
        return np.clip(out, 0.0, 1.0)


def _pipeline_resolution(pipe) -> int:
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return int(pipe.unet.config.sample_size) * scale


def load(descriptor: dict, weights_path: Path, backend: str = "auto", device: str = "cpu") -> LatentDiffusionGenerator:
    """Registry loader for ``family: latent_diffusion`` (``weights`` = a local diffusers folder)."""
    from diffusers import StableDiffusionPipeline

    from services.generator.backends import (compile_module, default_channels_last, is_cuda, resolve_backend,
                                             resolve_device)

    path = Path(weights_path)
    model_hash = verify_folder(path, descriptor.get("sha256"))
    cfg = dict(descriptor.get("config") or {})
    defaults = canonical_defaults(cfg)
    device = resolve_device(device)
    backend = resolve_backend(backend, device, BACKENDS, family="latent diffusion")
    # Stable-Diffusion checkpoints are fp16-native: fp16 on CUDA for both backends unless config.fp16 is false
    fp16 = is_cuda(device) and bool(cfg.get("fp16", True))
    kw = {"torch_dtype": torch.float16} if fp16 else {}
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path), local_files_only=True, safety_checker=None, requires_safety_checker=False, **kw,
        )
    except (OSError, ValueError) as e:
        raise GeneratorError(f"cannot load a Stable-Diffusion-format pipeline from {path}: {e}") from e
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    compiled = None
    if backend == "compile":
        if default_channels_last(backend, device):
            pipe.unet.to(memory_format=torch.channels_last)
        compiled = compile_module(pipe.unet)
    resolution = int(descriptor.get("resolution") or _pipeline_resolution(pipe))
    return LatentDiffusionGenerator(pipe, model_id=descriptor.get("model_id") or path.name, model_hash=model_hash,
                                    backend=backend, device=device, resolution=resolution, defaults=defaults,
                                    compiled_unet=compiled)


def load_path(path: str | Path, backend: str = "auto", device: str = "cpu", sha256: str | None = None,
              model_id: str | None = None) -> LatentDiffusionGenerator:
    """Load a local diffusers folder directly (``--model-path DIR``); ``sha256`` verified when given."""
    path = Path(path).expanduser().resolve()
    desc = {"model_id": model_id or f"local:{path.name}", "family": "latent_diffusion", "weights": str(path)}
    if sha256:
        desc["sha256"] = sha256
    return load(desc, path, backend, device)


def make_descriptor(path: str | Path, model_id: str, out_dir: str | Path | None = None, **config: Any) -> dict:
    """Descriptor (with the folder's sha256) for a local checkpoint; written to ``out_dir/<model_id>.json``."""
    path = Path(path).expanduser().resolve()
    sha = verify_folder(path, None)
    try:  # native resolution = UNet sample size x VAE downsampling, read from the component configs
        unet_cfg = json.loads((path / "unet" / "config.json").read_text())
        vae_cfg = json.loads((path / "vae" / "config.json").read_text())
        resolution = int(unet_cfg["sample_size"]) * 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    except (OSError, KeyError, ValueError, TypeError):
        resolution = 512
    desc = {"model_id": model_id, "family": "latent_diffusion", "weights": str(path), "resolution": resolution,
            "sha256": sha, "text_conditioned": True,
            "description": f"Stable-Diffusion-format checkpoint at {path}", "config": config}
    if out_dir is not None:
        out = Path(out_dir) / f"{model_id}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(desc, indent=2) + "\n")
    return desc
