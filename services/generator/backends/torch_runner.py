"""The torch backends: ``eager`` and ``compile`` (``torch.compile``, falling back to eager when compilation
fails), with the precision / memory-format preparation every family shares."""

from __future__ import annotations

import threading
from typing import Any, Callable, Collection

import torch

from services.common.logging import get_logger

from .policy import check_precision

log = get_logger(__name__)


def prepare_module(module: torch.nn.Module, device: str, *, fp16: bool = False,
                   channels_last: bool = False) -> torch.nn.Module:
    """``module`` (modified in place) in eval mode on ``device``, in fp16 or fp32, optionally channels_last."""
    check_precision(fp16, device)
    module = module.eval().to(device=device, dtype=torch.float16 if fp16 else torch.float32)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def compile_module(module: torch.nn.Module, mode: str | None = None, dynamic: bool | None = None):
    """``torch.compile`` of ``module`` (compiles lazily, on the first call)."""
    return torch.compile(module, mode=mode, dynamic=dynamic)


class CompileFallback:
    """Serialised calls of a compiled function; when one fails (e.g. no C++ compiler on a CPU host) a warning
    is logged and the eager function is used from then on. Dynamo's compile on first use is not meant to
    race, and a GPU serialises the kernels anyway."""

    def __init__(self, what: str):
        self.what = what
        self.failed = False
        self._lock = threading.Lock()

    def __call__(self, compiled: Callable, eager: Callable, *args: Any, **kwargs: Any):
        with self._lock:
            if not self.failed:
                try:
                    return compiled(*args, **kwargs)
                except Exception as e:  # noqa: BLE001 - any compiler failure -> eager
                    if type(e).__name__ == "OutOfMemoryError":
                        raise
                    log.warning("torch.compile of %s failed (%s: %s); using eager from now on", self.what,
                                type(e).__name__, e)
                    self.failed = True
            return eager(*args, **kwargs)


class TorchRunner:
    """A module whose ``forward`` takes positional tensors, run eager or compiled.

    Floating inputs are cast to the module dtype (except the positions in ``fp32_inputs``) and 4-D ones made
    channels_last when the module is; the output is float32 on ``device``."""

    def __init__(self, module: torch.nn.Module, device: str, *, compile: bool = False, fp16: bool = False,
                 channels_last: bool = False, compile_mode: str | None = None, dynamic: bool | None = None,
                 fp32_inputs: Collection[int] = ()):
        self.device = device
        self.dtype = torch.float16 if fp16 else torch.float32
        self.precision = ("fp16" if fp16 else "fp32") + ("+channels_last" if channels_last else "")
        self.channels_last = channels_last
        self.fp32_inputs = frozenset(fp32_inputs)
        self.module = prepare_module(module, device, fp16=fp16, channels_last=channels_last)
        self.name = "compile" if compile else "eager"
        self.fn: Callable = compile_module(self.module, compile_mode, dynamic) if compile else self.module
        self._fallback = CompileFallback(type(module).__name__) if compile else None

    @property
    def fell_back(self) -> bool:
        """True when compilation failed and the runner now runs eager."""
        return bool(self._fallback and self._fallback.failed)

    def _prep(self, i: int, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        if not t.is_floating_point():
            return t
        t = t.to(torch.float32 if i in self.fp32_inputs else self.dtype)
        if self.channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _run(self, fn: Callable, xs: list[torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return fn(*xs).float().contiguous()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        xs = [self._prep(i, t) for i, t in enumerate(inputs)]
        if self._fallback is None:
            return self._run(self.fn, xs)
        return self._fallback(lambda: self._run(self.fn, xs), lambda: self._run(self.module, xs))
