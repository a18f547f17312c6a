"""Class-conditional DDPM family: conditioning, guidance, determinism (fixed micro-batches, eager and ONNX),
samplers, per-request schedulers, ONNX vs eager, what ``auto`` loads on CPU, prompts (parsed by the caller),
registry loading. Tiny random-weight UNet (16 px) so everything runs in seconds."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
from concurrency import run_together

from services.common.findings import Condition
from services.generator.base import GenerationParams, GeneratorError
from services.generator.models.ddpm.loader import CPU_MICRO_BATCH, DDPMGenerator, load
from services.generator.models.ddpm.model import DEFAULT_SCHEDULE, ConditionalUNet, save_weights, unet_config
from services.generator.models.ddpm.sampling import make_scheduler

RES = 16
EFFUSION = Condition.from_findings(["pleural_effusion"], ["atelectasis"])
NORMAL = Condition.no_finding()
CARDIO = Condition.from_findings(["cardiomegaly"])
UNCOND = Condition()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddpm-tiny")
    torch.manual_seed(0)
    model = ConditionalUNet(unet_config("tiny", RES))
    with torch.no_grad():  # make the condition pathway strong so tests see clear differences
        model.cond.table.weight.normal_(0, 1.0)
    save_weights(model, d / "ddpm-tiny.safetensors", dtype=torch.float32)
    desc = {"model_id": "ddpm-tiny-test", "family": "ddpm", "weights": "ddpm-tiny.safetensors", "resolution": RES,
            "config": {"unet": unet_config("tiny", RES), "schedule": DEFAULT_SCHEDULE,
                       "defaults": {"sampler": "ddim", "steps": 4, "guidance": 2.0}}}
    (d / "ddpm-tiny-test.json").write_text(json.dumps(desc))
    return d


@pytest.fixture(scope="module")
def gen(tiny_dir) -> DDPMGenerator:
    desc = json.loads((tiny_dir / "ddpm-tiny-test.json").read_text())
    return load(desc, tiny_dir / desc["weights"], "eager", "cpu")


def test_output_contract(gen):
    out = gen.generate([EFFUSION, NORMAL], [1, 2])
    assert out.shape == (2, RES, RES) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert gen.generate([], []).shape == (0, RES, RES)


def test_condition_changes_output(gen):
    p = GenerationParams(sampler="ddim", steps=4, guidance=1.0)
    a = gen.generate([EFFUSION], [5], p)
    b = gen.generate([NORMAL], [5], p)
    assert np.abs(a - b).mean() > 1e-3


def test_guidance_changes_output_and_is_a_noop_without_condition(gen):
    p1 = GenerationParams(sampler="ddim", steps=4, guidance=1.0)
    p4 = GenerationParams(sampler="ddim", steps=4, guidance=4.0)
    assert np.abs(gen.generate([EFFUSION], [5], p1) - gen.generate([EFFUSION], [5], p4)).mean() > 1e-3
    # the unconditional (all unspecified) condition is the null condition: guidance cannot change it
    np.testing.assert_allclose(gen.generate([UNCOND], [5], p1), gen.generate([UNCOND], [5], p4), atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_same_seed_same_pixels_whatever_the_batch(gen, sampler):
    p = GenerationParams(sampler=sampler, steps=4, guidance=2.5)
    conds = [EFFUSION, NORMAL, CARDIO, UNCOND, EFFUSION, NORMAL]
    seeds = [10, 11, 12, 13, 14, 15]
    full = gen.generate(conds, seeds, p)
    alone = gen.generate([CARDIO], [12], p)
    shuffled = gen.generate(conds[::-1], seeds[::-1], p)
    assert np.array_equal(full[2], alone[0])
    assert np.array_equal(full, shuffled[::-1])
    assert np.array_equal(full, gen.generate(conds, seeds, p))
    assert not np.array_equal(full[0], full[4])  # different seeds, same condition -> different images


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
@pytest.mark.parametrize("steps", [1, 3, 7])
def test_each_sampler_runs_the_requested_steps(gen, sampler, steps):
    before = gen.unet_calls
    out = gen.generate([EFFUSION, NORMAL], [1, 2], GenerationParams(sampler=sampler, steps=steps))
    assert gen.unet_calls - before == steps  # one (CFG-batched) UNet pass per step
    assert np.isfinite(out).all()


def test_sampler_aliases_and_errors(gen):
    a = gen.generate([EFFUSION], [3], GenerationParams(sampler="DPM++", steps=3))
    b = gen.generate([EFFUSION], [3], GenerationParams(sampler="dpmpp", steps=3))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="'ddpm', 'ddim' or 'dpmpp'"):  # refused when the request is built
        GenerationParams(sampler="euler-a", steps=3)
    with pytest.raises(GeneratorError, match="one per image"):
        gen.generate([EFFUSION], [3, 4])


def test_schedulers_are_fresh_per_request():
    a = make_scheduler("dpmpp", DEFAULT_SCHEDULE)
    b = make_scheduler("dpmpp", DEFAULT_SCHEDULE)
    assert a is not b
    a.set_timesteps(5)
    b.set_timesteps(17)
    assert len(a.timesteps) == 5 and len(b.timesteps) == 17


def test_concurrent_requests_with_different_steps_do_not_interfere(gen):
    jobs = [("dpmpp", 3, [EFFUSION, NORMAL], [1, 2]), ("dpmpp", 9, [CARDIO], [7]), ("ddpm", 5, [NORMAL], [4])]
    expected = [gen.generate(c, s, GenerationParams(sampler=sm, steps=st)) for sm, st, c, s in jobs]

    def twice(sm, st, c, s):
        return [gen.generate(c, s, GenerationParams(sampler=sm, steps=st)) for _ in range(2)]

    results = run_together([partial(twice, *job) for job in jobs])  # fails naming any error a thread raised
    for j, outs in results.items():
        for out in outs:
            assert np.array_equal(out, expected[j])


def test_onnx_unet_matches_eager(tiny_dir, monkeypatch, tmp_path):
    from services.common.config import get_settings

    monkeypatch.setenv("SYNTHRAD_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    try:
        desc = json.loads((tiny_dir / "ddpm-tiny-test.json").read_text())
        eager = load(desc, tiny_dir / desc["weights"], "eager", "cpu")
        onnx = load(desc, tiny_dir / desc["weights"], "onnx", "cpu")
        assert onnx.backend == "onnx" and "CPUExecutionProvider" in onnx.denoise.providers
        assert list((tmp_path / "cache" / "onnx").glob("*.onnx")), "export is cached under the cache dir"
        # one UNet call
        x = torch.randn(3, 1, RES, RES)
        t = torch.tensor([999.0, 500.0, 3.0])
        c = torch.tensor([[1, 0, 2, 0], [2, 2, 2, 2], [0, 0, 0, 0]])
        ref = eager.denoise(x, t, c)
        got = onnx.denoise(x, t, c)
        assert float((ref - got).abs().max()) < 1e-4
        # a whole guided sampling run (tolerance: images in [0, 1])
        p = GenerationParams(sampler="dpmpp", steps=5, guidance=3.0)
        a = eager.generate([EFFUSION, NORMAL], [1, 2], p)
        b = onnx.generate([EFFUSION, NORMAL], [1, 2], p)
        assert np.abs(a - b).max() < 2e-3
        assert np.abs(np.round(a * 255) - np.round(b * 255)).max() <= 1  # 8-bit pixels: at most one level
        # the ONNX backend keeps the batch-composition guarantee
        assert np.array_equal(b[1], onnx.generate([NORMAL], [2], p)[0])
    finally:
        get_settings.cache_clear()


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNTHRAD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _load(tiny_dir, backend, monkeypatch=None, micro_batch=None):
    if micro_batch is not None:
        monkeypatch.setenv("SYNTHRAD_RUNTIME__DDPM_MICRO_BATCH", str(micro_batch))
    desc = json.loads((tiny_dir / "ddpm-tiny-test.json").read_text())
    return load(desc, tiny_dir / desc["weights"], backend, "cpu")


def test_every_unet_call_has_exactly_micro_batch_rows(tiny_dir, monkeypatch):
    g = _load(tiny_dir, "eager", monkeypatch, micro_batch=3)
    assert g.micro_batch == 3
    rows = []
    inner = g.denoise

    def counting(x, t, c):
        rows.append(x.shape[0])
        return inner(x, t, c)

    g.denoise = counting
    out = g.generate([EFFUSION] * 7, list(range(7)), GenerationParams(sampler="ddim", steps=2, guidance=2.0))
    assert out.shape == (7, RES, RES) and rows == [6] * 6  # 3 micro-batches (the last padded) x 2 steps, CFG x2
    monkeypatch.setenv("SYNTHRAD_RUNTIME__DDPM_MICRO_BATCH", "0")
    assert _load(tiny_dir, "eager").micro_batch == CPU_MICRO_BATCH  # 0: the CPU default


MIXED = [EFFUSION, NORMAL, CARDIO, UNCOND, EFFUSION, CARDIO, NORMAL]


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_image_alone_equals_the_same_image_inside_a_larger_mixed_request(tiny_dir, cache, backend):
    g = _load(tiny_dir, backend)
    assert g.backend == backend
    p = GenerationParams(sampler="dpmpp", steps=3, guidance=2.0)
    seeds = list(range(40, 40 + len(MIXED)))
    full = g.generate(MIXED, seeds, p)  # two micro-batches of 4, the second padded
    for i in (0, 3, 5, 6):
        assert np.array_equal(g.generate([MIXED[i]], [seeds[i]], p)[0], full[i]), i
    assert np.array_equal(g.generate(MIXED, seeds, p), full)  # same seed + condition + backend: same pixels


def test_auto_on_cpu_loads_onnx(tiny_dir, cache):
    a, o = _load(tiny_dir, "auto"), _load(tiny_dir, "onnx")
    assert a.backend == "onnx" and "CPUExecutionProvider" in a.denoise.providers
    p = GenerationParams(sampler="ddim", steps=2)
    assert np.array_equal(a.generate([EFFUSION], [1], p), o.generate([EFFUSION], [1], p))


def test_prompts_are_parsed_by_the_caller_not_the_model(gen):
    """The caller parses a prompt into a condition (services.common.prompts); the class-conditional model
    generates from conditions only and ignores prompts, like StyleGAN2."""
    from services.common.prompts import parse_prompt

    p = GenerationParams(sampler="ddim", steps=3)
    parsed = parse_prompt("Large right pleural effusion")
    assert parsed == Condition.from_findings(["pleural_effusion"])
    via_condition = gen.generate([parsed], [9], p)
    assert np.array_equal(gen.generate([parsed], [9], p, prompts=["Large right pleural effusion"]), via_condition)
    # a prompt beside a condition changes nothing: neither an unspecified one nor an explicit one
    assert np.array_equal(gen.generate([UNCOND], [9], p, prompts=["Large right pleural effusion"]),
                          gen.generate([UNCOND], [9], p))
    explicit = gen.generate([NORMAL], [9], p, prompts=["Large right pleural effusion"])
    assert np.array_equal(explicit, gen.generate([NORMAL], [9], p))


def test_resolution_resize(gen):
    out = gen.generate([EFFUSION], [1], GenerationParams(steps=2, resolution=32))
    assert out.shape == (1, 32, 32)


def test_registry_loads_the_family(tiny_dir, monkeypatch):
    from services.generator import registry

    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tiny_dir))
    g = registry.load_generator("ddpm-tiny-test", backend="eager", device="cpu")
    assert g.family == "ddpm" and g.resolution == RES
    assert g.model_hash == registry.weights_hash(tiny_dir / "ddpm-tiny.safetensors")
    out = g.generate([EFFUSION], [1])  # descriptor defaults: ddim, 4 steps
    assert out.shape == (1, RES, RES)
