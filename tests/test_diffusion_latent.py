"""Text-conditioned latent diffusion from a local Stable-Diffusion-format folder: a tiny pipeline built and
saved by the test (tiny UNet2DConditionModel, AutoencoderKL, CLIPTextModel, and a CLIPTokenizer whose
vocab.json / merges.txt this test writes) — no hub access."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from services.common.findings import Condition
from services.generator.base import GenerationParams, GeneratorError

PROMPTS = ["Large right pleural effusion", "No acute cardiopulmonary process"]


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _write_tokenizer_files(d) -> tuple[str, str, int]:
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in chars:
        vocab[ch] = len(vocab)
    for ch in chars:
        vocab[ch + "</w>"] = len(vocab)
    merges = ["e f", "ef f", "u s", "i o", "io n</w>", "p l", "pl e", "r a", "l a", "r g", "g e</w>"]
    for m in merges:
        vocab[m.replace(" ", "")] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(d / "vocab.json"), str(d / "merges.txt"), len(vocab)


def build_tiny_sd(folder) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _, _, n_vocab = _write_tokenizer_files(folder.parent / "tokenizer-src")
    # from the folder holding vocab.json + merges.txt (works with transformers 4.x and 5.x alike)
    tok = CLIPTokenizer.from_pretrained(str(folder.parent / "tokenizer-src"), model_max_length=77)
    assert len(tok) == n_vocab
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=4)
    with torch.no_grad():  # random init leaves cross-attention nearly silent; make the text matter visibly
        for name, prm in unet.named_parameters():
            if "attn2" in name and prm.ndim == 2:
                prm.normal_(0.0, 0.5)
    vae = AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    te = CLIPTextModel(CLIPTextConfig(
        bos_token_id=n_vocab - 2, eos_token_id=n_vocab - 1, pad_token_id=n_vocab - 1, hidden_size=32,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=n_vocab,
        max_position_embeddings=77))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd") / "pipeline"
    build_tiny_sd(folder)
    return folder


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
    expected = [gen.generate([Condition()], [2], GenerationParams(sampler=s, steps=n), prompts=PROMPTS[:1]) for s, n in jobs]
    results, errors = {}, []
    barrier = threading.Barrier(len(jobs))

    def work(j):
        try:
            barrier.wait()
            s, n = jobs[j]
            results[j] = gen.generate([Condition()], [2], GenerationParams(sampler=s, steps=n), prompts=PROMPTS[:1])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(len(jobs))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
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
    expected = [gen.generate([Condition()], [5], GenerationParams(sampler=s, steps=n), prompts=[p]) for s, n, p in jobs]
    monkeypatch.setattr(tok_cls, "set_truncation_and_padding", slow)
    results, errors = {}, []
    barrier = threading.Barrier(len(jobs))

    def work(j):
        try:
            barrier.wait()
            s, n, p = jobs[j]
            results[j] = gen.generate([Condition()], [5], GenerationParams(sampler=s, steps=n), prompts=[p])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(len(jobs))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
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
