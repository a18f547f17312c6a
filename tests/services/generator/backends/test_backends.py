"""The backend layer: what ``auto`` picks on CPU, fixed-size micro-batches, ONNX Runtime session options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.common.findings import Condition
from services.generator import backends
from services.generator.backends import (BackendError, fixed_micro_batches, in_fixed_micro_batches, micro_batch_size,
                                         policy, resolve_backend)
from services.generator.base import GeneratorError

A, B, C = Condition.from_findings(["pleural_effusion"]), Condition.no_finding(), Condition()


# ---- auto ----------------------------------------------------------------------------------------------------
def test_auto_on_cpu_is_onnx_for_families_that_have_it_else_eager():
    assert resolve_backend("auto", "cpu") == resolve_backend(None, "cpu") == "onnx"
    assert resolve_backend(" AUTO ", "cpu", ("eager", "compile"), "latent diffusion") == "eager"
    assert resolve_backend("auto", "cuda") == resolve_backend("auto", "cuda:1", ("eager", "compile")) == "compile"
    assert resolve_backend("eager", "cpu") == "eager"  # eager stays selectable


def test_auto_on_cpu_falls_back_to_eager_without_onnxruntime(monkeypatch):
    monkeypatch.setattr(policy, "onnxruntime_available", lambda: False)
    assert resolve_backend("auto", "cpu") == "eager"
    with pytest.raises(BackendError, match="unknown backend"):
        resolve_backend("tensorrt", "cpu")


def test_the_environment_report_says_what_auto_picks_per_family():
    from services.generator.backends.__main__ import environment

    env = environment()
    assert env["auto"]["cpu"]["backend"] == "onnx"
    assert env["auto_by_family"]["stylegan2"]["cpu"] == env["auto_by_family"]["ddpm"]["cpu"] == "onnx"
    assert env["auto_by_family"]["latent_diffusion"]["cpu"] == "eager"


# ---- fixed micro-batches -------------------------------------------------------------------------------------
def test_micro_batches_all_have_the_fixed_size_and_pad_with_the_last_image():
    got = list(fixed_micro_batches([A, B, C, A, B], [1, 2, 3, 4, 5], 2))
    assert got == [([A, B], [1, 2], 2), ([C, A], [3, 4], 2), ([B, B], [5, 5], 1)]
    assert list(fixed_micro_batches([A], [7], 4)) == [([A] * 4, [7] * 4, 1)]
    assert list(fixed_micro_batches([], [], 4)) == []
    with pytest.raises(ValueError, match=">= 1"):
        list(fixed_micro_batches([A], [1], 0))
    with pytest.raises(GeneratorError, match="one per image"):
        list(fixed_micro_batches([A], [1, 2], 2))


def test_in_fixed_micro_batches_calls_one_shape_and_drops_the_padding():
    calls = []

    def run(conds, seeds):
        calls.append(len(seeds))
        return np.asarray(seeds, np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)

    out = in_fixed_micro_batches(run, [A] * 7, list(range(10, 17)), 3)
    assert calls == [3, 3, 3] and out.shape == (7, 2, 2) and out[:, 0, 0].tolist() == list(range(10, 17))


def test_micro_batch_size_setting_or_the_device_default():
    assert micro_batch_size(None, "cpu", cuda=64, cpu=8) == micro_batch_size(0, "cpu", cuda=64, cpu=8) == 8
    assert micro_batch_size(None, "cuda:1", cuda=64, cpu=8) == 64
    assert micro_batch_size(3, "cuda", cuda=64, cpu=8) == 3


# ---- ONNX Runtime --------------------------------------------------------------------------------------------
class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.lin = torch.nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        return self.lin(torch.relu(self.conv(x)).flatten(1))


def _onnx(tmp_path, monkeypatch, threads=None, spinning=None):
    if threads:
        monkeypatch.setenv("SYNTHRAD_RUNTIME__ORT_THREADS", str(threads))
    if spinning is not None:
        monkeypatch.setenv("SYNTHRAD_RUNTIME__ORT_SPINNING", "true" if spinning else "false")
    return backends.build_runner(_Net(), [torch.zeros(1, 3, 8, 8)], ["x"], "onnx", "cpu", cache_dir=tmp_path,
                                 onnx_key="test-net", onnx_name="net")


def test_onnx_sessions_do_not_spin_by_default_and_follow_the_settings(tmp_path, monkeypatch):
    r = _onnx(tmp_path, monkeypatch)
    opts = r.session.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert r.session.intra_op_threads == torch.get_num_threads()
    r = _onnx(tmp_path, monkeypatch, threads=1, spinning=True)
    opts = r.session.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert r.session.intra_op_threads == 1


def test_onnx_outputs_do_not_depend_on_thread_count_or_batch_position(tmp_path, monkeypatch):
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    one = _onnx(tmp_path, monkeypatch, threads=1)(x)
    two = _onnx(tmp_path, monkeypatch, threads=2)(x)
    assert torch.equal(one, two)
    assert torch.equal(one.flip(0), _onnx(tmp_path, monkeypatch, threads=2)(x.flip(0)))  # same shape, rows moved
    ref = _Net()(x).detach()
    assert float((one - ref).abs().max()) < 1e-4
