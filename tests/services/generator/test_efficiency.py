"""measure_efficiency on the shipped StyleGAN2 (tiny runs: structure and positive values, never timings)."""

from __future__ import annotations

import pytest
import torch

from services.generator.base import GeneratorError
from services.generator.efficiency import (BackendEfficiency, EfficiencyReport, _devices, _skip_reason,
                                           efficiency_rows, family_backends, measure_efficiency)

MODEL = "stylegan2-cxr64"


def test_one_backend_in_a_worker():
    seen = []
    rep = measure_efficiency(MODEL, backends=["eager"], device="cpu", images=8, memory_batch=2, warmup=1, batch=4,
                             threads=1, progress=lambda d, t, s: seen.append((d, t, s)))
    assert isinstance(rep, EfficiencyReport)
    assert (rep.model_id, rep.family, rep.resolution) == (MODEL, "stylegan2", 64) and len(rep.model_hash) == 64
    assert rep.host["torch"] == torch.__version__ and rep.host["cpu_count"] >= 1
    (r,) = rep.results
    assert (r.backend, r.device, r.status, r.reason) == ("eager", "cpu", "ok", None)
    assert r.threads == 1 and r.torch_version == torch.__version__ and r.device_name
    assert r.load_seconds > 0 and r.seconds > 0 and r.seconds_per_1000 > 0 and r.images_per_second > 0
    assert r.seconds_per_1000 == pytest.approx(r.seconds / 8 * 1000, rel=1e-3)
    assert r.images == 8 and r.memory_batch == 2 and r.batch == 4 and r.warmup_calls == 1 and r.warmup_seconds > 0
    assert r.extrapolated and any("extrapolated" in n for n in rep.notes)
    assert r.peak_memory_mb is not None and r.peak_memory_mb >= 0 and r.rss_after_load_mb > 0
    assert r.memory_method in ("vmhwm", "ru_maxrss")
    assert r.worker_seconds >= r.load_seconds
    # progress counted every image of the worker (memory batch + warm-up + timed), ending at the total
    assert seen[-1][0] == seen[-1][1] == 2 + 4 + 8 and all(s == "eager on cpu" for _, _, s in seen)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    cols, rows = efficiency_rows(rep)
    assert cols[4] == "peak MB (2 images)" and len(rows) == 1 and len(rows[0]) == len(cols)
    assert rows[0][:3] == ["eager", "cpu", "ok"] and "extrapolated from 8 images" in rows[0][-1]


def test_unavailable_combinations_are_skipped_with_the_reason():
    rep = measure_efficiency(MODEL, backends=["nope"], device="cpu", images=1)
    (r,) = rep.results
    assert r.status == "skipped" and "unknown backend" in r.reason and r.seconds_per_1000 is None
    reason = _skip_reason("onnx", "cpu", ("eager", "compile"), "latent_diffusion")
    assert reason and "no onnx backend" in reason
    assert set(family_backends("stylegan2")) == {"eager", "compile", "onnx"}
    assert _devices("auto") == ["cpu", "cuda"] == _devices(["cpu", "all"]) and _devices("CUDA:1") == ["cuda:1"]
    if not torch.cuda.is_available():
        rep = measure_efficiency(MODEL, backends=["eager", "onnx"], device="cuda", images=1)
        assert [(r.backend, r.device, r.status) for r in rep.results] == [("eager", "cuda", "skipped"),
                                                                          ("onnx", "cuda", "skipped")]
        assert all("no GPU" in r.reason for r in rep.results)
    else:  # a GPU: the CUDA figures are the allocator's
        rep = measure_efficiency(MODEL, backends=["eager"], device="cuda", images=4, memory_batch=2, warmup=0,
                                 batch=4)
        (r,) = rep.results
        assert r.status == "ok" and r.memory_method == "cuda_max_memory_allocated" and r.cuda_device_used_mb > 0


def test_a_worker_past_its_timeout_fails_and_bad_arguments_are_refused():
    rep = measure_efficiency(MODEL, backends=["eager"], device="cpu", images=1000, timeout_s=0.5)
    (r,) = rep.results
    assert r.status == "failed" and "timed out" in r.reason
    for kw in ({"images": 0}, {"memory_batch": 0}, {"params": {"steps": 0}}, {"device": "tpu"}):
        with pytest.raises(GeneratorError):
            measure_efficiency(MODEL, backends=["eager"], **kw)
    assert BackendEfficiency(backend="eager", device="cpu", status="skipped").peak_memory_mb is None
