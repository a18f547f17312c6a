"""Settings: every knob in one typed place, read from SYNTHRAD_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.config import Settings


@pytest.mark.parametrize("spec, want", [("auto", "auto"), (" CPU ", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1")])
def test_device_takes_the_specs_the_cli_takes(spec, want):
    assert Settings(device=spec).device == want


def test_a_device_that_is_not_one_is_refused_naming_the_forms():
    with pytest.raises(ValidationError, match="use auto, cpu, cuda or cuda:N"):
        Settings(device="gpu")


def test_model_dirs_from_a_path_list_or_json(monkeypatch):
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", "/a:/b")
    assert Settings().model_dirs == [Path("/a"), Path("/b")]
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", '["/c"]')
    assert Settings().model_dirs == [Path("/c")]


def test_runtime_settings_and_the_names_of_earlier_releases(monkeypatch, caplog):
    monkeypatch.setenv("SYNTHRAD_RUNTIME__ORT_THREADS", "2")
    assert Settings().runtime.ort_threads == 2
    monkeypatch.delenv("SYNTHRAD_RUNTIME__ORT_THREADS")
    monkeypatch.setenv("SYNTHRAD_DDPM_MICRO_BATCH", "3")
    with caplog.at_level("WARNING", logger="synthrad.config"):
        assert Settings().runtime.ddpm_micro_batch == 3
    assert "set SYNTHRAD_RUNTIME__DDPM_MICRO_BATCH instead" in caplog.text


def test_micro_batch_and_onnx_runtime_settings(monkeypatch):
    r = Settings().runtime
    assert r.stylegan2_micro_batch is None and r.ddpm_micro_batch is None and r.ort_spinning is False
    monkeypatch.setenv("SYNTHRAD_RUNTIME__STYLEGAN2_MICRO_BATCH", "16")
    monkeypatch.setenv("SYNTHRAD_RUNTIME__DDPM_MICRO_BATCH", "0")  # 0: the per-device default
    monkeypatch.setenv("SYNTHRAD_RUNTIME__ORT_SPINNING", "true")
    r = Settings().runtime
    assert (r.stylegan2_micro_batch, r.ddpm_micro_batch, r.ort_spinning) == (16, 0, True)
    monkeypatch.setenv("SYNTHRAD_RUNTIME__STYLEGAN2_MICRO_BATCH", "-1")
    with pytest.raises(ValidationError):
        Settings()


def test_the_default_reference_is_a_setting(monkeypatch):
    assert Settings().default_reference == "nih-cxr64"
    monkeypatch.setenv("SYNTHRAD_DEFAULT_REFERENCE", "my-ref")
    assert Settings().default_reference == "my-ref"
