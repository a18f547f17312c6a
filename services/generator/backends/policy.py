"""Which backend and precision a model runs with: the one meaning of ``auto`` (package docstring)."""

from __future__ import annotations

from typing import Sequence

from services.generator.base import GeneratorError

BACKENDS = ("eager", "compile", "onnx")


class BackendError(GeneratorError):
    """A backend / precision / device combination that cannot run (asked for by the caller, not caused by
    the weights)."""


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def onnxruntime_available() -> bool:
    """True when ONNX Runtime can be imported (a dependency of synthrad; checked, not assumed)."""
    try:
        import onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install counts as none
        return False
    return True


def resolve_backend(backend: str | None, device: str, supported: Sequence[str] = BACKENDS,
                    family: str | None = None) -> str:
    """``auto`` -> ``compile`` on CUDA; on CPU ``onnx`` when the family has it (and ONNX Runtime imports),
    else ``eager``. Any other name is checked against ``BACKENDS`` and the backends the family ``supported``."""
    name = (backend or "auto").strip().lower()
    if name == "auto":
        if is_cuda(device):
            return "compile"
        return "onnx" if "onnx" in supported and onnxruntime_available() else "eager"
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    if name not in supported:
        what = f"{family} models" if family else "this model"
        raise BackendError(f"backend {name!r} is not available for {what}; use {' or '.join(supported)}")
    return name


def default_fp16(backend: str, device: str) -> bool:
    """fp16 weights/activations by default: only ``compile`` on CUDA (eager and onnx run fp32)."""
    return backend == "compile" and is_cuda(device)


def default_channels_last(backend: str, device: str) -> bool:
    """channels_last memory format by default: only ``compile`` on CUDA."""
    return backend == "compile" and is_cuda(device)


def check_precision(fp16: bool, device: str) -> None:
    if fp16 and not is_cuda(device):
        raise BackendError("fp16 is only supported on CUDA")
