"""Inference backends of every generator family: the one place that turns a torch module into a runner.

``build_runner(module, example_inputs, input_names, backend, device)`` returns ``runner(*tensors) ->
float32 tensor on device`` for a module whose ``forward`` takes positional tensors (the StyleGAN2
generator, the DDPM UNet). Families whose modules are called by a library (the Stable-Diffusion pipeline
calls its UNet with keyword arguments) use the same pieces directly: :func:`resolve_backend`,
:func:`prepare_module`, :func:`compile_module` and :class:`CompileFallback`.

Backends:

* ``eager``   — the torch module as is, fp32 (a family may ask fp16 on CUDA: latent diffusion does, as
  Stable-Diffusion checkpoints are fp16-native; its descriptor's ``config.fp16: false`` keeps fp32).
* ``compile`` — ``torch.compile``; on CUDA fp16 weights/activations and channels_last memory format.
  Calls are serialised; if compilation fails (e.g. no C++ compiler) a warning is logged and the model runs
  eager from then on.
* ``onnx``    — one ONNX export (fp32, cached under the settings' cache dir by a key naming the weights) run
  by ONNX Runtime with TensorRT > CUDA > CPU execution providers, whichever are installed
  (:mod:`.onnx_runtime`); intra-op threads from ``settings.runtime.ort_threads`` (default: torch's), not
  spin-waiting between kernels unless ``settings.runtime.ort_spinning``.
  Not every family has it (latent diffusion: eager and compile only).
* ``auto``    — one rule for every family:

  - **CPU**: ``onnx`` (fp32, ONNX Runtime CPU EP) for the families that have it (``stylegan2``, ``ddpm``),
    else ``eager`` fp32 (``latent_diffusion``; also when ONNX Runtime cannot be imported). Measured on the
    2-core dev VM through a stored batch job (benchmarks/RESULTS-inference.md): ONNX Runtime is a little
    faster than eager for StyleGAN2 and as fast for the (compute-bound) DDPM UNet, and its outputs do not
    depend on the thread count. The export is made once per model hash;
  - **CUDA** (``cuda`` / ``cuda:N``): ``compile`` with fp16 + channels_last.

Determinism: families run fixed-size micro-batches (:mod:`.micro_batch`), so with a given backend an image's
pixels are bit-identical whatever else shares its request, on CPU with ``eager`` and ``onnx`` alike (tested).
``onnx`` CPU outputs also do not depend on the intra-op thread count; ``eager`` outputs can (oneDNN
partitions differently).

Tolerances, onnx vs eager fp32 on CPU, on [0, 1] images (tests bound them, the benchmark measures the shipped
models; docs/models.md): StyleGAN2 <= 1e-4 (shipped model ~3e-6); DDPM one UNet call <= 1e-4, a guided
sampling run <= 2e-3 (the sampler amplifies the differences; shipped model, 20-step DPM-Solver++: ~2e-4);
8-bit pixels at most one level apart. fp16 paths on CUDA <= ~2e-2.

``python -m services.generator.backends`` prints what this machine offers and what ``auto`` picks.
"""

from __future__ import annotations

import copy
import os
from typing import Collection, Sequence

import torch

from services.common.config import resolve_device

from .micro_batch import fixed_micro_batches, in_fixed_micro_batches, micro_batch_size
from .policy import (BACKENDS, BackendError, check_precision, default_channels_last, default_fp16, is_cuda,
                     onnxruntime_available, resolve_backend)
from .torch_runner import CompileFallback, TorchRunner, compile_module, prepare_module

__all__ = ["BACKENDS", "BackendError", "CompileFallback", "TorchRunner", "build_runner", "compile_module",
           "default_channels_last", "default_fp16", "fixed_micro_batches", "in_fixed_micro_batches", "is_cuda",
           "micro_batch_size", "onnxruntime_available", "prepare_module", "resolve_backend", "resolve_device"]


def build_runner(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], input_names: Sequence[str],
                 backend: str = "auto", device: str = "cpu", *, output_names: Sequence[str] = ("out",),
                 fp16: bool | None = None, channels_last: bool | None = None, fp32_inputs: Collection[str] = (),
                 cache_dir: str | os.PathLike | None = None, onnx_key: str | None = None, onnx_name: str = "model",
                 compile_mode: str | None = None, dynamic: bool | None = None, opset: int | None = None,
                 supported: Sequence[str] = BACKENDS, family: str | None = None):
    """Wrap ``module`` for ``backend`` on ``device`` (see the module docstring); ``module`` is not modified.

    ``fp16`` / ``channels_last`` default to the backend's rule (``compile`` on CUDA); ``fp32_inputs`` names
    floating inputs kept in fp32 when the module runs fp16 (e.g. diffusion timesteps). ``onnx_key`` identifies
    the export across processes (weights hash + config): without it the module is exported on every build.
    """
    device = resolve_device(device)
    backend = resolve_backend(backend, device, supported, family)
    if backend == "onnx":
        from services.common.config import get_settings

        from .onnx_runtime import build_onnx_runner

        settings = get_settings()
        return build_onnx_runner(module, example_inputs, input_names, device, output_names=output_names,
                                 fp16=bool(fp16), cache_dir=cache_dir or settings.resolved_cache_dir,
                                 onnx_key=onnx_key, onnx_name=onnx_name, opset=opset,
                                 threads=settings.runtime.ort_threads, spinning=settings.runtime.ort_spinning)
    use_fp16 = default_fp16(backend, device) if fp16 is None else bool(fp16)
    use_cl = default_channels_last(backend, device) if channels_last is None else bool(channels_last)
    check_precision(use_fp16, device)
    keep = [i for i, n in enumerate(input_names) if n in set(fp32_inputs)]
    return TorchRunner(copy.deepcopy(module), device, compile=(backend == "compile"), fp16=use_fp16,
                       channels_last=use_cl, compile_mode=compile_mode, dynamic=dynamic, fp32_inputs=keep)
