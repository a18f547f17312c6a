"""Generic ONNX export + ONNX Runtime session with automatic execution-provider selection.

Reusable by any model family (StyleGAN2 generator, diffusion UNet): nothing here knows about the model.

* :func:`export_onnx` exports a module whose ``forward`` takes positional tensors (named ``input_names``)
  with a dynamic batch axis. It uses the TorchScript exporter (fast; works on torch 2.11 without
  onnxscript) and falls back to the dynamo exporter (opset 18) when that fails.
* :func:`select_providers` picks TensorRT > CUDA > CPU from what the installed onnxruntime offers
  (``onnxruntime-gpu`` for CUDA, plus TensorRT libraries for TensorRT), with a TensorRT engine cache
  (``trt_engine_cache_path``) and optional fp16 (``trt_fp16_enable``).
* :class:`OnnxRunner` runs a session on torch tensors and returns a torch tensor.
* :func:`build_onnx_runner` is the ``onnx`` backend: export once (cached on disk by a caller-given key), then
  an :class:`OnnxRunner` whose output is moved to the requested device.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from services.common.logging import get_logger

log = get_logger(__name__)

DEFAULT_OPSET = 17


def export_onnx(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], path: str | os.PathLike,
                input_names: Sequence[str], output_names: Sequence[str] = ("out",), opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True) -> Path:
    """Export ``module`` to ``path`` (atomically: temp file then rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    module = module.eval()
    args = tuple(example_inputs)
    err: Exception | None = None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer / constant-folding chatter
        try:
            kw = {}
            if dynamic_batch:
                kw["dynamic_axes"] = {n: {0: "batch"} for n in list(input_names) + list(output_names)}
            try:
                torch.onnx.export(module, args, str(tmp), input_names=list(input_names),
                                  output_names=list(output_names), opset_version=opset, dynamo=False, **kw)
            except TypeError:  # a torch without the ``dynamo`` argument: the TorchScript exporter is the default
                torch.onnx.export(module, args, str(tmp), input_names=list(input_names),
                                  output_names=list(output_names), opset_version=opset, **kw)
        except Exception as e:  # pragma: no cover - depends on the torch build
            err = e
            log.warning("TorchScript ONNX export failed (%s); trying the dynamo exporter", e)
            kw = {}
            if dynamic_batch:
                batch = torch.export.Dim("batch", min=1, max=65536)
                kw["dynamic_shapes"] = tuple({0: batch} for _ in input_names)
            torch.onnx.export(module, args, str(tmp), input_names=list(input_names), output_names=list(output_names),
                              opset_version=max(opset, 18), dynamo=True, **kw)
            err = None
    if err is not None:  # pragma: no cover
        raise err
    os.replace(tmp, path)
    return path


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _tensorrt_usable() -> bool:
    """The TensorRT EP is listed by onnxruntime-gpu builds even without TensorRT libraries; check them."""
    try:
        import tensorrt  # noqa: F401

        return True
    except Exception:
        pass
    import ctypes.util

    return ctypes.util.find_library("nvinfer") is not None


def select_providers(device: str = "cpu", fp16: bool = False, cache_dir: str | os.PathLike | None = None,
                     device_id: int = 0) -> list:
    """Execution providers in priority order for ``device`` (``cpu`` | ``cuda`` | ``cuda:N``).

    On CUDA: TensorRT (when usable; engine cache in ``cache_dir``/trt, fp16 when ``fp16``) then CUDA, always
    followed by CPU as fallback.
    """
    avail = available_providers()
    chosen: list = []
    if device.startswith("cuda"):
        if ":" in device:
            device_id = int(device.split(":", 1)[1])
        if "TensorrtExecutionProvider" in avail and _tensorrt_usable():
            opts = {"device_id": device_id, "trt_fp16_enable": bool(fp16)}
            if cache_dir is not None:
                trt_dir = Path(cache_dir) / "trt"
                trt_dir.mkdir(parents=True, exist_ok=True)
                opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_dir),
                             "trt_timing_cache_enable": True})
            chosen.append(("TensorrtExecutionProvider", opts))
        if "CUDAExecutionProvider" in avail:
            chosen.append(("CUDAExecutionProvider", {"device_id": device_id}))
        if not chosen:
            log.warning("device %s asked for, but onnxruntime offers only %s; running ONNX on CPU "
                        "(install onnxruntime-gpu for the CUDA/TensorRT providers)", device, avail)
    chosen.append("CPUExecutionProvider")
    return chosen


class OnnxRunner:
    """An ONNX Runtime session called with torch tensors (by position, in ``input_names`` order)."""

    def __init__(self, onnx_path: str | os.PathLike, device: str = "cpu", fp16: bool = False,
                 cache_dir: str | os.PathLike | None = None, providers: list | None = None,
                 intra_op_threads: int | None = None, spinning: bool = False):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is None:
            intra_op_threads = torch.get_num_threads()
        so.intra_op_num_threads = max(1, int(intra_op_threads))
        # Spin-waiting threads burn the core between kernels: on a shared CPU they fight other processes for it
        # (measured on the 2-core dev VM next to a training job: 2 spinning threads 10-12 img/s, 2 waiting
        # threads 14, StyleGAN2 64 px). Outputs do not depend on it, nor on the thread count.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.intra_op_threads = so.intra_op_num_threads
        self.providers = providers or select_providers(device, fp16=fp16, cache_dir=cache_dir)
        self.session = ort.InferenceSession(str(onnx_path), sess_options=so, providers=self.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.active_providers = self.session.get_providers()
        self.device = device

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Outputs on CPU (ONNX Runtime hands back numpy arrays)."""
        feeds = {n: np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32, copy=False))
                 if t.is_floating_point() else t.detach().cpu().numpy()
                 for n, t in zip(self.input_names, inputs)}
        out = self.session.run(self.output_names[:1], feeds)[0]
        return torch.from_numpy(out)


def onnx_cache_path(cache_dir: str | os.PathLike, key: str, name: str = "model") -> Path:
    """Where an export for ``key`` (e.g. weights hash + config) lives: ``cache_dir/onnx/<name>-<hash>.onnx``."""
    h = hashlib.sha256(f"{key}|torch={torch.__version__}".encode()).hexdigest()[:16]
    return Path(cache_dir) / "onnx" / f"{name}-{h}.onnx"


class OnnxBackendRunner:
    """The ``onnx`` backend's runner: ``runner(*tensors) -> float32 tensor on device``."""

    name = "onnx"

    def __init__(self, session: OnnxRunner, onnx_path: Path, device: str, fp16: bool):
        self.session = session
        self.onnx_path = onnx_path
        self.device = device
        self.precision = "fp16" if fp16 else "fp32"
        self.providers = session.active_providers

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.session(*inputs).float().to(self.device)


def build_onnx_runner(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], input_names: Sequence[str],
                      device: str, *, output_names: Sequence[str] = ("out",), fp16: bool = False,
                      cache_dir: str | os.PathLike, onnx_key: str | None = None, onnx_name: str = "model",
                      opset: int | None = None, threads: int | None = None,
                      spinning: bool = False) -> OnnxBackendRunner:
    """Export ``module`` (fp32, CPU; a copy) unless ``onnx_key``'s export is cached, and open a session.
    Without ``onnx_key`` the module is exported every time (nothing identifies it across processes)."""
    import copy

    key = onnx_key or f"{onnx_name}-{id(module)}"
    path = onnx_cache_path(cache_dir, key, onnx_name)
    if not path.exists() or onnx_key is None:
        examples = [t.float().cpu() if t.is_floating_point() else t.cpu() for t in example_inputs]
        export_onnx(copy.deepcopy(module).float().cpu().eval(), examples, path, input_names, output_names,
                    opset=opset or DEFAULT_OPSET)
    session = OnnxRunner(path, device=device, fp16=fp16, cache_dir=Path(cache_dir), intra_op_threads=threads,
                         spinning=spinning)
    return OnnxBackendRunner(session, path, device, fp16)
