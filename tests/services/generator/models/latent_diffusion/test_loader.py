"""Text-conditioned latent diffusion from a local Stable-Diffusion-format folder: the tiny pipeline of
tests/support/sd_tiny.py (tiny UNet2DConditionModel, AutoencoderKL, CLIPTextModel, and a CLIPTokenizer from
vocab.json / merges.txt written there), built and saved by the test — no hub access."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from concurrency import run_together

from services.common.findings import Condition
from services.generator.base import GenerationParams, GeneratorError

PROMPTS = ["Large right pleural effusion", "No acute cardiopulmonary process"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(sd_folder, tmp_path_factory):
    from services.generator.models.latent_diffusion import make_descriptor

    d = tmp_path_factory.mktemp("descriptors")
    make_descriptor(sd_folder, "tiny-sd-test", out_dir=d, sampler="ddim", steps=3, guidance=3.0)
    return d


@pytest.fixture(scope="module")
def gen(model_dir):
    from services.generator.models.latent_diffusion import load

    desc = json.loads((model_dir / "tiny-sd-test.json").read_text())
    from pathlib import Path

    return load(desc, Path(desc["weights"]), "eager", "cpu")


def test_folder_is_a_local_sd_checkpoint(sd_folder):
    assert (sd_folder / "model_index.json").exists()
    assert (sd_folder / "tokenizer").is_dir() and (sd_folder / "text_encoder").is_dir()


def test_generates_from_a_prompt(gen):
    assert gen.text_conditioned and gen.family == "latent_diffusion" and gen.resolution == 16
    out = gen.generate([Condition()] * 2, [1, 1], prompts=PROMPTS)
    assert out.shape == (2, 16, 16) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out[0] - out[1]).mean() > 1e-4  # same seed, different prompt -> different image
    again = gen.generate([Condition()], [1], prompts=PROMPTS[:1])
    np.testing.assert_allclose(again[0], out[0], atol=1e-4)  # same seed + prompt -> same image, any batch


def test_condition_text_is_used_without_a_prompt(gen):
    cond = Condition.from_findings(["pleural_effusion"])
    a = gen.generate([cond], [4])
    b = gen.generate([Condition()], [4], prompts=[cond.describe()])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_samplers_and_steps_per_request_in_threads(gen):
    jobs = [("ddim", 2), ("dpmpp", 5), ("ddpm", 3)]

    def one(s, n):
        return gen.generate([Condition()], [2], GenerationParams(sampler=s, steps=n), prompts=PROMPTS[:1])

    expected = [one(s, n) for s, n in jobs]
    results = run_together([partial(one, s, n) for s, n in jobs])  # fails naming any error a thread raised
    for j, out in results.items():
        np.testing.assert_allclose(out, expected[j], atol=1e-5)
    assert gen.pipe.scheduler.__class__.__name__ == "DDIMScheduler"  # the loaded pipeline's scheduler is untouched


def test_concurrent_requests_do_not_share_tokenizer_state(gen, monkeypatch):
    """A fast tokenizer stores padding/truncation on its backend before encoding, and the SD pipeline calls it
    with two different settings per prompt; widen that window so a shared tokenizer would race every time."""
    import time

    tok_cls = type(gen.pipe.tokenizer)
    if not hasattr(tok_cls, "set_truncation_and_padding"):
        pytest.skip("slow (pure-Python) tokenizer keeps no per-call state")
    orig = tok_cls.set_truncation_and_padding

    def slow(self, *a, **k):
        orig(self, *a, **k)
        time.sleep(0.02)

    jobs = [("ddim", 2, PROMPTS[0]), ("ddim", 2, PROMPTS[1]), ("dpmpp", 2, PROMPTS[0])]

    def one(s, n, p):
        return gen.generate([Condition()], [5], GenerationParams(sampler=s, steps=n), prompts=[p])

    expected = [one(*job) for job in jobs]
    monkeypatch.setattr(tok_cls, "set_truncation_and_padding", slow)
    results = run_together([partial(one, *job) for job in jobs])  # fails naming any error a thread raised
    assert sorted(results) == [0, 1, 2]
    for j, out in results.items():
        np.testing.assert_allclose(out, expected[j], atol=1e-5)


def test_registry_loads_with_hash_check(model_dir, monkeypatch):
    from services.generator import registry

    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(model_dir))
    info = registry.model_info("tiny-sd-test")
    assert info.text_conditioned and info.family == "latent_diffusion" and info.resolution == 16
    g = registry.load_generator("tiny-sd-test", backend="eager", device="cpu")
    assert g.generate([Condition()], [0], prompts=["cardiomegaly"]).shape == (1, 16, 16)


def test_hash_mismatch_is_refused(sd_folder, model_dir, tmp_path, monkeypatch):
    from services.generator import registry
    from services.generator.models.latent_diffusion import HashMismatch, load, load_path

    desc = json.loads((model_dir / "tiny-sd-test.json").read_text())
    bad = dict(desc, model_id="tiny-sd-bad", sha256="0" * 64)
    with pytest.raises(HashMismatch, match="sha256 .* expects 0000"):
        load(bad, sd_folder, "eager", "cpu")
    with pytest.raises(HashMismatch, match="refusing"):
        load_path(sd_folder, sha256="f" * 64)
    # through the registry: a descriptor whose folder changed after hashing is refused too
    (tmp_path / "tiny-sd-bad.json").write_text(json.dumps(bad))
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tmp_path))
    with pytest.raises(GeneratorError, match="sha256"):
        registry.load_generator("tiny-sd-bad", backend="eager", device="cpu")


def test_load_path_without_descriptor(sd_folder):
    from services.generator.models.latent_diffusion import load_path, verify_folder

    g = load_path(sd_folder, sha256=verify_folder(sd_folder, None))
    assert g.generate([Condition()], [3], GenerationParams(steps=2), prompts=["effusion"]).shape == (1, 16, 16)
    with pytest.raises(GeneratorError, match="not available"):
        load_path(sd_folder, backend="onnx")
    with pytest.raises(GeneratorError, match="model_index.json"):
        load_path(sd_folder / "unet")
