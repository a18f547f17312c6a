"""Inference backends shared by all generator families: one interface, chosen by config or argument.

``build_runner(module, example_inputs, input_names, backend, device)`` returns a callable
``runner(*tensors) -> float32 tensor on CPU`` for a module whose ``forward`` takes positional tensors:

* ``eager``   — the torch module as is (fp32).
* ``compile`` — ``torch.compile``; on CUDA additionally fp16 weights/activations and channels_last memory
  format (the module must be fp16-safe; StyleGAN2 pre-normalises its modulated convs like NVlabs).
* ``onnx``    — one ONNX export (cached on disk by a caller-given key) run by ONNX Runtime; providers are
  chosen automatically: TensorRT (engine cache, optional fp16) > CUDA > CPU, see :mod:`.onnx_runtime`.
* ``auto``    — ``compile`` on CUDA, ``eager`` on CPU.

Tolerances (checked by tests/benchmarks): onnx vs eager fp32 on CPU <= 1e-3 absolute on [-1, 1] outputs;
fp16 paths on CUDA <= ~2e-2. Only ``eager`` on CPU is bit-reproducible across batch compositions.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from services.common.config import resolve_device  # noqa: F401  (re-exported: loaders import it from here)

BACKENDS = ("eager", "compile", "onnx")


class BackendError(ValueError):
    pass


def resolve_backend(backend: str | None, device: str) -> str:
    backend = (backend or "auto").lower()
    if backend == "auto":
        return "compile" if str(device).startswith("cuda") else "eager"
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    return backend


class TorchRunner:
    """Eager or compiled torch module; casts floating inputs to the module dtype, returns float32 on CPU."""

    def __init__(self, module: torch.nn.Module, device: str, compile: bool = False, fp16: bool = False,
                 channels_last: bool = False, compile_mode: str | None = None, dynamic: bool | None = None):
        self.device = device
        self.dtype = torch.float16 if fp16 else torch.float32
        self.precision = "fp16" if fp16 else "fp32"
        self.channels_last = channels_last
        module = module.eval().to(device=device, dtype=self.dtype)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = module
        self.fn: Callable = torch.compile(module, mode=compile_mode, dynamic=dynamic) if compile else module
        self.name = "compile" if compile else "eager"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        xs = []
        for t in inputs:
            t = t.to(self.device, non_blocking=True)
            if t.is_floating_point():
                t = t.to(self.dtype)
                if self.channels_last and t.ndim == 4:
                    t = t.contiguous(memory_format=torch.channels_last)
            xs.append(t)
        with torch.inference_mode():
            out = self.fn(*xs)
        return out.float().contiguous().cpu()


class OnnxBackendRunner:
    def __init__(self, runner, onnx_path: Path, fp16: bool):
        self.runner = runner
        self.onnx_path = onnx_path
        self.name = "onnx"
        self.device = runner.device
        self.precision = "fp16" if fp16 else "fp32"
        self.providers = runner.active_providers

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.runner(*inputs)


def build_runner(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], input_names: Sequence[str],
                 backend: str = "auto", device: str = "cpu", *, output_names: Sequence[str] = ("out",),
                 fp16: bool | None = None, channels_last: bool | None = None, cache_dir: str | os.PathLike | None = None,
                 onnx_key: str | None = None, onnx_name: str = "model", compile_mode: str | None = None,
                 opset: int | None = None):
    """Wrap ``module`` for ``backend`` on ``device`` (see module docstring). ``module`` is not modified."""
    device = resolve_device(device)
    backend = resolve_backend(backend, device)
    cuda = device.startswith("cuda")
    if backend in ("eager", "compile"):
        m = copy.deepcopy(module)
        use_fp16 = bool(fp16) if fp16 is not None else (backend == "compile" and cuda)
        use_cl = bool(channels_last) if channels_last is not None else (backend == "compile" and cuda)
        if use_fp16 and not cuda:
            raise BackendError("fp16 is only supported on CUDA")
        return TorchRunner(m, device, compile=(backend == "compile"), fp16=use_fp16, channels_last=use_cl,
                           compile_mode=compile_mode)
    # onnx
    from .onnx_runtime import DEFAULT_OPSET, OnnxRunner, export_onnx, onnx_cache_path

    if cache_dir is None:
        from services.common.config import get_settings

        cache_dir = get_settings().resolved_cache_dir
    key = onnx_key or f"{onnx_name}-{id(module)}"
    path = onnx_cache_path(cache_dir, key, onnx_name)
    if not path.exists() or onnx_key is None:
        export_onnx(copy.deepcopy(module).float().cpu().eval(), [t.float().cpu() if t.is_floating_point() else t.cpu()
                                                                 for t in example_inputs],
                    path, input_names, output_names, opset=opset or DEFAULT_OPSET)
    use_fp16 = bool(fp16) if fp16 is not None else False
    runner = OnnxRunner(path, device=device, fp16=use_fp16, cache_dir=Path(cache_dir))
    return OnnxBackendRunner(runner, path, use_fp16)
