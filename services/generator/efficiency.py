"""How much a model costs to serve: peak memory for a small batch and time per 1000 images, per backend and device.

``measure_efficiency(model_id)`` (what ``synthrad evaluate efficiency --model M`` prints) measures every backend ×
device in a **fresh subprocess** (``python -m services.generator.efficiency --worker ...``), so that one backend's
allocations, caches and threads never reach another's figures:

1. load the model with the backend on the device through the registry (``load_seconds``: the weights' sha256
   check, reading them, building the runner; an ONNX export made there, when the cache holds none for these
   weights, is part of it and flagged ``onnx_exported``);
2. **memory**: generate ``memory_batch`` images (8) right after loading, cold — the allocations a fresh replica
   makes for its first request. On CPU, ``peak_memory_mb`` is the peak resident set above the one after loading
   (Linux: the peak is reset after loading through ``/proc/self/clear_refs``, read back as ``VmHWM``; elsewhere
   ``ru_maxrss``, whose peak may still be the load's — ``memory_method`` says which). On CUDA it is
   ``torch.cuda.max_memory_allocated`` above the allocation after loading (torch's allocator; ONNX Runtime's CUDA
   allocations show in ``cuda_device_used_mb``, the device memory in use by then, from ``cudaMemGetInfo``);
3. ``warmup`` untimed calls of ``batch`` images (``torch.compile`` compiles here; ``warmup_seconds``);
4. **time**: ``images`` images in calls of ``batch`` (CUDA synchronised), conditions cycling through a fixed set,
   seeds 0.. — ``seconds_per_1000`` is measured on ``images`` images and only extrapolated when ``images`` is
   below 1000 (``extrapolated: true``).

Unavailable combinations are reported ``skipped`` with the reason (no GPU, no CUDA execution provider for ONNX
Runtime, a backend the family does not have), a worker that fails or runs past ``timeout_s`` ``failed`` with its
error. The generator layer only: nothing here imports the metrics or the gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Literal, Sequence

from pydantic import BaseModel, Field

ProgressFn = Callable[[int, int, str], None]  # (done, total, stage), like the evaluations' progress
RESULT_PREFIX = "SYNTHRAD-EFFICIENCY "
PROGRESS_PREFIX = "SYNTHRAD-EFFICIENCY-PROGRESS "
DEFAULT_BATCH = 16  # the serving chunk (settings.serve.generator_max_batch_size's default)


class BackendEfficiency(BaseModel):
    """One backend on one device (``status``: ok | skipped | failed; figures are None unless ok)."""

    backend: str
    device: str = Field(description="the device asked for: cpu | cuda | cuda:N")
    status: Literal["ok", "skipped", "failed"]
    reason: str | None = Field(None, description="why skipped / failed, or a caveat (compile fell back to eager)")
    device_name: str | None = None
    precision: str | None = Field(None, description="fp32 | fp16, + channels_last; ONNX Runtime's providers")
    torch_version: str | None = None
    onnxruntime_version: str | None = None
    threads: int | None = Field(None, description="torch intra-op threads in the worker")
    ort_threads: int | None = Field(None, description="ONNX Runtime intra-op threads (onnx)")
    load_seconds: float | None = None
    onnx_exported: bool | None = Field(None, description="the load exported the model to ONNX (no cached export)")
    memory_batch: int = 8
    peak_memory_mb: float | None = Field(None, description="peak memory above the after-load baseline while "
                                                           "generating memory_batch images (CPU: resident set; "
                                                           "CUDA: torch allocator)")
    memory_method: str | None = Field(None, description="vmhwm | ru_maxrss | cuda_max_memory_allocated")
    rss_after_load_mb: float | None = Field(None, description="the worker's resident set after loading")
    load_rss_mb: float | None = Field(None, description="resident set added by loading the model")
    cuda_device_used_mb: float | None = Field(None, description="device memory in use after the memory batch "
                                                                "(all allocators, this process and others)")
    warmup_calls: int = 0
    warmup_seconds: float | None = None
    batch: int = DEFAULT_BATCH
    images: int = 0
    seconds: float | None = Field(None, description="wall time for the timed images")
    seconds_per_1000: float | None = None
    images_per_second: float | None = None
    extrapolated: bool = Field(False, description="seconds_per_1000 scaled up from fewer than 1000 images")
    worker_seconds: float | None = Field(None, description="the worker's whole run, start to exit")


class EfficiencyReport(BaseModel):
    model_id: str
    family: str
    resolution: int
    model_hash: str
    params: dict[str, Any] = Field(default_factory=dict, description="the generation parameters asked for")
    images: int
    memory_batch: int
    batch: int
    warmup: int
    host: dict[str, Any] = Field(default_factory=dict, description="platform, CPU, cores, python, torch, GPUs")
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    results: list[BackendEfficiency] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


# ---- what can run here ------------------------------------------------------------------------------------------------
def family_backends(family: str) -> tuple[str, ...]:
    from services.generator.backends import BACKENDS

    if family == "latent_diffusion":
        from services.generator.models.latent_diffusion.loader import BACKENDS as LD

        return tuple(LD)
    return tuple(BACKENDS)


def _devices(device: str | Sequence[str]) -> list[str]:
    """``auto`` / ``all``: cpu and cuda (cuda reported skipped without a GPU); else the device(s) named."""
    from services.common.config import device_spec
    from services.generator.base import GeneratorError

    names = [device] if isinstance(device, str) else list(device)
    out: list[str] = []
    for d in names:
        try:
            s = "all" if str(d).strip().lower() == "all" else device_spec(d)
        except ValueError as e:
            raise GeneratorError(str(e)) from None
        for x in (["cpu", "cuda"] if s in ("auto", "all") else [s]):
            if x not in out:
                out.append(x)
    return out


def _skip_reason(backend: str, device: str, supported: Sequence[str], family: str) -> str | None:
    from services.generator.backends import BACKENDS

    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}"
    if backend not in supported:
        return f"{family} models have no {backend} backend ({', '.join(supported)} only)"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return "no GPU here (torch.cuda.is_available() is False)"
        from services.common.config import resolve_device

        try:
            resolve_device(device)
        except ValueError as e:
            return str(e)
        if backend == "onnx":
            try:
                from services.generator.backends.onnx_runtime import available_providers

                prov = available_providers()
            except ImportError as e:
                return f"onnxruntime cannot be imported: {e}"
            if "CUDAExecutionProvider" not in prov and "TensorrtExecutionProvider" not in prov:
                return (f"onnxruntime offers no CUDA execution provider ({', '.join(prov)}): install "
                        "onnxruntime-gpu to run onnx on the GPU")
    elif device != "cpu":
        return f"unknown device {device!r}"
    if backend == "onnx":
        from services.generator.backends import onnxruntime_available

        if not onnxruntime_available():
            return "onnxruntime cannot be imported"
    return None


def host_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                            if torch.cuda.is_available() else []}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except Exception:  # noqa: BLE001
        info["onnxruntime"] = None
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---- the parent: one worker per backend x device --------------------------------------------------------------------
def measure_efficiency(model_id: str, backends: Sequence[str] | None = None, device: str | Sequence[str] = "auto",
                       images: int = 1000, memory_batch: int = 8, warmup: int = 1, batch: int | None = None,
                       threads: int | None = None, params: dict | None = None, timeout_s: float | None = None,
                       progress: ProgressFn | None = None) -> EfficiencyReport:
    """Peak memory for ``memory_batch`` images and seconds per 1000 images of ``model_id`` for every backend
    (default: every backend its family has) on every device (``auto``: cpu, and cuda when there is a GPU — reported
    skipped otherwise), each measured in a fresh worker process (see the module docstring).

    ``batch``: images per ``generate`` call (default 16, the serving chunk); ``threads``: torch (and ONNX Runtime)
    intra-op threads in the workers (default: torch's default); ``params``: :class:`GenerationParams` fields
    (e.g. ``{"steps": 20}``); ``timeout_s``: per worker. ``progress(done, total, stage)`` counts images."""
    from services.generator.base import GenerationParams, GeneratorError
    from services.generator.registry import canonical_model_id, model_info

    if images < 1 or memory_batch < 1 or warmup < 0:
        raise GeneratorError("images and memory_batch must be >= 1, warmup >= 0")
    batch = int(batch or DEFAULT_BATCH)
    if batch < 1:
        raise GeneratorError("batch must be >= 1")
    from pydantic import ValidationError

    try:
        GenerationParams(**(params or {}))  # refused here, not in every worker
    except ValidationError as e:
        err = e.errors()[0]
        raise GeneratorError(f"params {'.'.join(map(str, err.get('loc', ()))) or ''}: {err.get('msg')}") from None
    model_id = canonical_model_id(model_id)
    info = model_info(model_id)
    supported = family_backends(info.family)
    wanted = list(backends) if backends else list(supported)
    devices = _devices(device)
    report = EfficiencyReport(model_id=model_id, family=info.family, resolution=info.resolution,
                              model_hash=info.model_hash, params=dict(params or {}), images=images,
                              memory_batch=memory_batch, batch=batch, warmup=warmup, host=host_info())
    if images < 1000:
        report.notes.append(f"seconds_per_1000 is extrapolated from {images} images")
    combos = [(b, d) for d in devices for b in wanted]
    per = memory_batch + warmup * batch + images
    total = per * len(combos)
    done = 0
    for b, d in combos:
        reason = _skip_reason(b, d, supported, info.family)
        stage = f"{b} on {d}"
        if reason:
            report.results.append(BackendEfficiency(backend=b, device=d, status="skipped", reason=reason,
                                                    memory_batch=memory_batch, batch=batch))
        else:
            count = [done]

            def tick(k: int, count=count, stage=stage) -> None:  # k images more
                count[0] += k
                if progress is not None:
                    progress(min(total, count[0]), total, stage)

            report.results.append(_run_worker(model_id, b, d, images, memory_batch, warmup, batch, threads,
                                              params or {}, timeout_s, tick))
        done += per
        if progress is not None:
            progress(done, total, stage)
    return report


def _run_worker(model_id: str, backend: str, device: str, images: int, memory_batch: int, warmup: int, batch: int,
                threads: int | None, params: dict, timeout_s: float | None,
                tick: Callable[[int], None]) -> BackendEfficiency:
    cmd = [sys.executable, "-m", "services.generator.efficiency", "--worker", "--model", model_id, "--backend",
           backend, "--device", device, "--images", str(images), "--memory-batch", str(memory_batch), "--warmup",
           str(warmup), "--batch", str(batch), "--params", json.dumps(params)]
    env = dict(os.environ)
    if threads:
        cmd += ["--threads", str(threads)]
        env["OMP_NUM_THREADS"] = str(threads)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout_s, kill) if timeout_s else None
    if timer:
        timer.start()
    err_lines: list[str] = []
    drain = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    drain.start()
    result: dict | None = None
    try:
        for line in proc.stdout:
            if line.startswith(PROGRESS_PREFIX):
                tick(int(line[len(PROGRESS_PREFIX):].strip() or 0))
            elif line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX):])
        proc.wait()
    finally:
        if timer:
            timer.cancel()
        drain.join(timeout=5)
    base = {"backend": backend, "device": device, "memory_batch": memory_batch, "batch": batch}
    if timed_out.is_set():
        return BackendEfficiency(**base, status="failed", reason=f"timed out after {timeout_s:g} s")
    if proc.returncode != 0 or result is None:
        tail = "".join(err_lines).strip().splitlines()[-3:]
        return BackendEfficiency(**base, status="failed",
                                 reason=f"worker exited {proc.returncode}: " + (" | ".join(tail) or "no output"))
    result["worker_seconds"] = round(time.perf_counter() - t0, 2)
    return BackendEfficiency.model_validate(result)


# ---- the worker -------------------------------------------------------------------------------------------------------
def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def _maxrss_mb() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def _onnx_files() -> set[str]:
    from services.common.config import get_settings

    root = get_settings().resolved_cache_dir
    return {str(p) for p in root.rglob("*.onnx")} if root.is_dir() else set()


def _conditions(n: int, start: int = 0):
    from services.common.findings import FINDINGS, Condition

    cycle = [Condition.from_findings([], list(FINDINGS))] + [Condition.from_findings([f], []) for f in FINDINGS]
    return [cycle[(start + i) % len(cycle)] for i in range(n)]


def worker(model_id: str, backend: str, device: str, images: int, memory_batch: int, warmup: int, batch: int,
           threads: int | None = None, params: dict | None = None, emit: Callable[[int], None] | None = None) -> dict:
    """One backend on one device, in this process (call it in a fresh one: the memory figures assume so)."""
    import gc

    import torch

    from services.common.config import get_settings, resolve_device
    from services.generator.base import GenerationParams
    from services.generator.registry import load_generator

    if threads:
        torch.set_num_threads(int(threads))
    emit = emit or (lambda k: None)
    dev = resolve_device(device)
    cuda = dev.startswith("cuda")
    gp = GenerationParams(**(params or {}))
    out: dict[str, Any] = {"backend": backend, "device": device, "status": "ok", "torch_version": torch.__version__,
                           "threads": torch.get_num_threads(), "memory_batch": memory_batch, "batch": batch,
                           "warmup_calls": warmup}
    if cuda:
        out["device_name"] = torch.cuda.get_device_name(torch.device(dev))
    else:
        out["device_name"] = f"{_cpu_name()} ({os.cpu_count()} logical cores)"
    if backend == "onnx":
        import onnxruntime

        out["onnxruntime_version"] = onnxruntime.__version__
        out["ort_threads"] = get_settings().runtime.ort_threads or torch.get_num_threads()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(torch.device(dev))

    gc.collect()
    rss0 = _rss_mb()
    before = _onnx_files() if backend == "onnx" else set()
    t = time.perf_counter()
    gen = load_generator(model_id, backend=backend, device=dev)
    sync()
    out["load_seconds"] = round(time.perf_counter() - t, 3)
    if backend == "onnx":
        out["onnx_exported"] = bool(_onnx_files() - before)
    runner = getattr(gen, "runner", None) or getattr(gen, "denoise", None)
    prec = getattr(runner, "precision", None) or getattr(gen, "precision", None)
    provs = getattr(runner, "providers", None)
    out["precision"] = (f"{prec}" if prec else None) if not provs else f"{prec} ({', '.join(map(str, provs))})"

    # memory: the first memory_batch images after loading
    gc.collect()
    rss1 = _rss_mb()
    out["rss_after_load_mb"] = None if rss1 is None else round(rss1, 1)
    out["load_rss_mb"] = None if rss0 is None or rss1 is None else round(rss1 - rss0, 1)
    if cuda:
        torch.cuda.reset_peak_memory_stats(torch.device(dev))
        base_alloc = torch.cuda.memory_allocated(torch.device(dev))
    reset = False if cuda else _reset_peak_rss()
    base_peak = _maxrss_mb()
    gen.generate(_conditions(memory_batch), list(range(memory_batch)), gp)
    sync()
    emit(memory_batch)
    if cuda:
        peak = torch.cuda.max_memory_allocated(torch.device(dev))
        out["peak_memory_mb"] = round((peak - base_alloc) / 2 ** 20, 1)
        out["memory_method"] = "cuda_max_memory_allocated"
        free, total = torch.cuda.mem_get_info(torch.device(dev))
        out["cuda_device_used_mb"] = round((total - free) / 2 ** 20, 1)
    elif reset:
        out["peak_memory_mb"] = round(max(0.0, _status_kb("VmHWM") / 1024.0 - rss1), 1)
        out["memory_method"] = "vmhwm"
    else:
        out["peak_memory_mb"] = round(max(0.0, _maxrss_mb() - max(base_peak, rss1 or 0.0)), 1)
        out["memory_method"] = "ru_maxrss"

    # warm-up (compile happens here), then the timed images
    t = time.perf_counter()
    for w in range(warmup):
        gen.generate(_conditions(batch, w), list(range(10 ** 6 + w * batch, 10 ** 6 + (w + 1) * batch)), gp)
        sync()
        emit(batch)
    out["warmup_seconds"] = round(time.perf_counter() - t, 3) if warmup else None
    if getattr(runner, "fell_back", False):
        out["reason"] = "torch.compile failed; these are eager's figures"
    done = 0
    elapsed = 0.0
    while done < images:
        n = min(batch, images - done)
        conds, seeds = _conditions(n, done), list(range(done, done + n))
        sync()
        t = time.perf_counter()
        gen.generate(conds, seeds, gp)
        sync()
        elapsed += time.perf_counter() - t
        done += n
        emit(n)
    out["images"] = images
    out["seconds"] = round(elapsed, 4)
    out["seconds_per_1000"] = round(elapsed / images * 1000.0, 3)
    out["images_per_second"] = round(images / elapsed, 3) if elapsed > 0 else None
    out["extrapolated"] = images < 1000
    return out


# ---- the table --------------------------------------------------------------------------------------------------------
COLUMNS = ["backend", "device", "status", "load s", "peak MB (8 images)", "s / 1000 images", "images/s", "threads",
           "precision", "note"]


def efficiency_rows(report: EfficiencyReport) -> tuple[list[str], list[list[Any]]]:
    """``(columns, rows)`` of the report for a table (None cells: n/a). The memory column names the report's
    ``memory_batch``; ``s / 1000 images`` is marked ``*`` in the note when extrapolated."""
    cols = list(COLUMNS)
    cols[4] = f"peak MB ({report.memory_batch} images)"
    rows = []
    for r in report.results:
        note = r.reason or ""
        if r.status == "ok":
            bits = [f"{r.device_name}"]
            if r.extrapolated:
                bits.append(f"s / 1000 extrapolated from {r.images} images")
            if r.onnx_exported:
                bits.append("load includes the ONNX export")
            if r.memory_method == "ru_maxrss":
                bits.append("peak from ru_maxrss (may be the load's)")
            note = "; ".join(([note] if note else []) + bits)
        rows.append([r.backend, r.device, r.status, r.load_seconds, r.peak_memory_mb, r.seconds_per_1000,
                     r.images_per_second, r.threads, r.precision, note])
    return cols, rows


# ---- command line -----------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.generator.efficiency",
                                 description="Peak memory and time per 1000 images of a model, per backend and device "
                                             "(--worker: one measurement in this process, for measure_efficiency).")
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", action="append", help="repeatable (default: every backend of the family)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--memory-batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--params", default="{}", help="generation parameters as JSON, e.g. '{\"steps\": 20}'")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per worker")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    params = json.loads(args.params)
    if args.worker:
        def emit(k: int) -> None:
            print(f"{PROGRESS_PREFIX}{k}", flush=True)

        out = worker(args.model, (args.backend or ["auto"])[0], args.device, args.images, args.memory_batch,
                     args.warmup, args.batch, args.threads, params, emit)
        print(RESULT_PREFIX + json.dumps(out), flush=True)
        return 0
    report = measure_efficiency(args.model, args.backend, args.device, args.images, args.memory_batch, args.warmup,
                                args.batch, args.threads, params, args.timeout,
                                progress=lambda d, t, s: print(f"\r{s}: {d}/{t}", end="", file=sys.stderr))
    print(file=sys.stderr)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        cols, rows = efficiency_rows(report)
        print(f"{report.model_id} ({report.family}, {report.resolution} px), batch {report.batch}, "
              f"{report.images} timed images, torch {report.host.get('torch')}")
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join("n/a" if v is None else str(v) for v in r))
        for n in report.notes:
            print(f"note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
