"""UNet execution backends for the DDPM family: eager, torch.compile (fp16 + channels_last on CUDA),
and ONNX Runtime (one ONNX export of the conditional UNet, CPU EP here, CUDA/TensorRT EPs when present).

Each backend is a callable ``denoise(x, t, codes) -> eps`` (float32 in, float32 out) that is safe to
call from several threads.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import torch

from services.common.logging import get_logger

from .model import ConditionalUNet

log = get_logger(__name__)

BACKENDS = ("eager", "compile", "onnx")
ONNX_OPSET = 17


class EagerDenoiser:
    name = "eager"

    def __init__(self, model: ConditionalUNet, device: str, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        self.device = torch.device(device)
        self.dtype = dtype
        self.channels_last = channels_last
        self.model = model.to(self.device, dtype=dtype).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, x: torch.Tensor, t: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model(self._prep(x), t.to(self.device, torch.float32), codes.to(self.device))
        return out.float().contiguous()


class CompiledDenoiser(EagerDenoiser):
    """``torch.compile`` of the conditional UNet; fp16 + channels_last on CUDA, fp32 on CPU.

    Falls back to eager (with a warning) when compilation fails, e.g. no C++ compiler on a CPU host.
    Calls are serialised: dynamo's compile on first use is not meant to race, and a GPU serialises
    the kernels anyway.
    """

    name = "compile"

    def __init__(self, model: ConditionalUNet, device: str, mode: str | None = None):
        cuda = torch.device(device).type == "cuda"
        super().__init__(model, device, dtype=torch.float16 if cuda else torch.float32, channels_last=cuda)
        self.eager_model = self.model
        self.model = torch.compile(self.model, mode=mode, dynamic=False)
        self._lock = threading.Lock()
        self._failed = False

    def __call__(self, x, t, codes):
        with self._lock:
            if not self._failed:
                try:
                    return super().__call__(x, t, codes)
                except Exception as e:  # noqa: BLE001 - any compiler failure -> eager
                    log.warning("torch.compile failed (%s: %s); using eager for this model", type(e).__name__, e)
                    self._failed = True
                    self.model = self.eager_model
            return super().__call__(x, t, codes)


# ---- ONNX (export + EP selection + session from the shared backends package) -------------------------------
ONNX_INPUTS = ("sample", "timestep", "codes")


def export_onnx(model: ConditionalUNet, path: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Export ``(sample, timestep, codes) -> eps`` with a dynamic batch axis (fp32, CPU)."""
    from services.generator.backends.onnx_runtime import export_onnx as shared_export

    m = model.to("cpu", torch.float32).eval()
    r = m.resolution
    args = (torch.randn(2, 1, r, r), torch.tensor([10.0, 500.0]), torch.tensor([[0, 1, 2, 0], [2, 2, 2, 2]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' shape asserts trace as constants (TracerWarning)
        return shared_export(m, args, path, input_names=ONNX_INPUTS, output_names=("eps",), opset=opset)


class OnnxDenoiser:
    """ONNX Runtime session over the exported UNet (``InferenceSession.run`` is thread-safe).
    Providers: ``backends.onnx_runtime.select_providers`` (TensorRT > CUDA > CPU, whatever is installed)."""

    name = "onnx"

    def __init__(self, onnx_path: str | Path, device: str = "cpu", providers: list | None = None):
        from services.generator.backends.onnx_runtime import OnnxRunner

        threads = os.environ.get("SYNTHRAD_ORT_THREADS")
        cache = _cache_dir()
        self.runner = OnnxRunner(onnx_path, device=device, fp16=False, cache_dir=cache, providers=providers,
                                 intra_op_threads=int(threads) if threads else None)
        self.active_providers = self.runner.active_providers
        self.device = torch.device(device)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        eps = self.runner(x.float(), t.float(), codes.long())
        return eps.to(self.device)


def _cache_dir() -> Path:
    from services.common.config import get_settings

    return get_settings().resolved_cache_dir


def onnx_cache_path(model_hash: str) -> Path:
    from services.generator.backends.onnx_runtime import onnx_cache_path as shared_path

    return shared_path(_cache_dir(), f"ddpm|{model_hash}|opset{ONNX_OPSET}", name="ddpm-unet")


def make_denoiser(model: ConditionalUNet, backend: str, device: str, model_hash: str = "", onnx_path: str | Path | None = None):
    """Build the backend; the ONNX export is cached per model hash under the settings' cache dir."""
    if backend == "eager":
        return EagerDenoiser(model, device)
    if backend == "compile":
        return CompiledDenoiser(model, device)
    if backend == "onnx":
        path = Path(onnx_path) if onnx_path else onnx_cache_path(model_hash or "unhashed")
        if onnx_path or not path.exists() or not model_hash:
            export_onnx(model, path)
        return OnnxDenoiser(path, device)
    raise ValueError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
