"""StyleGAN2 LoadedGenerator: determinism, batch independence (fixed micro-batches, eager and ONNX), truncation,
ONNX vs eager, what ``auto`` loads on CPU, generate CLI."""

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from stylegan2_tiny import make_model

from services.common.findings import Condition
from services.generator import registry
from services.generator.base import GenerationParams, GeneratorError
from services.generator.models.stylegan2.loader import CPU_MICRO_BATCH

ONNX_ATOL = 1e-4  # on [0, 1] images (observed ~5e-6; the shipped 64 px model ~3e-6)
ONNX_MAX_LEVELS = 1  # on 8-bit pixels: a float difference that small moves a pixel by at most one level


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tmp_path))
    return make_model(tmp_path)


EFF = Condition.from_findings(present=["pleural effusion"], absent=["cardiomegaly"])
NORMAL = Condition.no_finding()


def test_same_seed_same_pixels_independent_of_batch(model):
    g = registry.load_generator(model, "eager", "cpu")
    a = g.generate([EFF, NORMAL, EFF], [7, 8, 9])
    assert a.shape == (3, 16, 16) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    b = g.generate([EFF], [7])
    c = g.generate([NORMAL, EFF, EFF, NORMAL], [1, 9, 7, 2])
    assert np.array_equal(a[0], b[0])  # bit-identical
    assert np.array_equal(a[0], c[2]) and np.array_equal(a[2], c[1])
    assert not np.array_equal(a[0], a[2])  # different seeds differ


def _load(model, backend, micro_batch=None, monkeypatch=None):
    """The family loader (not the registry's per-process cache), with ``runtime.stylegan2_micro_batch`` set."""
    from services.generator.models.stylegan2.loader import load

    if micro_batch is not None:
        monkeypatch.setenv("SYNTHRAD_RUNTIME__STYLEGAN2_MICRO_BATCH", str(micro_batch))
    desc, weights = registry.resolve(model)
    return load(desc, weights, backend, "cpu")


MIXED = [EFF, NORMAL, Condition(), EFF, Condition.from_findings(present=["atelectasis"]), NORMAL, EFF, NORMAL, EFF,
         Condition(), EFF]


@pytest.mark.parametrize("backend", ["eager", "onnx"])
@pytest.mark.parametrize("micro_batch", [3, 0])  # 0: the CPU default
def test_image_alone_equals_the_same_image_inside_a_larger_mixed_request(model, backend, micro_batch, monkeypatch,
                                                                         tmp_path):
    """Fixed micro-batches: every forward pass has the same shape, so image i's pixels do not depend on what
    shares its request (crossing micro-batch boundaries, at any position, padded or not) — exactly."""
    monkeypatch.setenv("SYNTHRAD_CACHE_DIR", str(tmp_path / "cache"))
    g = _load(model, backend, micro_batch, monkeypatch)
    assert g.backend == backend and g.micro_batch == (micro_batch or CPU_MICRO_BATCH)
    seeds = list(range(100, 100 + len(MIXED)))
    for params in (None, GenerationParams(truncation=0.7)):
        full = g.generate(MIXED, seeds, params)
        for i in (0, 4, 7, 10):
            assert np.array_equal(g.generate([MIXED[i]], [seeds[i]], params)[0], full[i]), i
        assert np.array_equal(g.generate(MIXED[::-1], seeds[::-1], params)[::-1], full)
        assert np.array_equal(g.generate(MIXED, seeds, params), full)  # same seed + condition + backend: same pixels
    assert np.array_equal(g.raw(MIXED[:4], seeds[:4])[2], g.raw([MIXED[2]], [seeds[2]])[0])


def test_every_forward_pass_has_exactly_micro_batch_images(model, monkeypatch):
    g = _load(model, "eager", 4, monkeypatch)
    shapes = []
    inner = g.runner

    def counting(*inputs):
        shapes.append(inputs[0].shape[0])
        return inner(*inputs)

    g.runner = counting
    out = g.generate([EFF] * 9, list(range(9)))
    assert out.shape == (9, 16, 16) and shapes == [4, 4, 4]  # the last pass: 1 image + 3 padding
    shapes.clear()
    g.generate([EFF], [3], GenerationParams(resolution=32))
    assert shapes == [4]


def test_auto_on_cpu_loads_onnx_with_the_same_pixels_as_onnx(model, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHRAD_CACHE_DIR", str(tmp_path / "cache"))
    a = registry.load_generator(model, "auto", "cpu")
    o = registry.load_generator(model, "onnx", "cpu")
    assert a.backend == "onnx" and a.precision == "fp32" and a.info().model_hash == o.model_hash
    assert np.array_equal(a.generate([EFF, NORMAL], [1, 2]), o.generate([EFF, NORMAL], [1, 2]))


def test_condition_and_truncation_change_output(model):
    g = registry.load_generator(model, "eager", "cpu")
    a = g.generate([EFF, NORMAL], [5, 5])
    assert np.abs(a[0] - a[1]).max() > 1e-3
    t0 = g.generate([EFF, EFF], [5, 6], GenerationParams(truncation=0.0))
    t1 = g.generate([EFF], [5], GenerationParams(truncation=1.0))
    # psi = 0: w is the per-condition centre for every seed (only the noise inputs still differ)
    assert np.abs(t0[0] - t1[0]).max() > 1e-4
    assert np.abs(t0[0] - t0[1]).mean() < np.abs(a[0] - g.generate([EFF], [6])[0]).mean()


def test_rejects_bad_requests(model):
    g = registry.load_generator(model, "eager", "cpu")
    with pytest.raises(GeneratorError):
        g.generate([EFF], [1, 2])
    with pytest.raises(GeneratorError):
        g.generate([EFF], [-1])
    with pytest.raises(GeneratorError):
        g.generate([EFF], [1], GenerationParams(resolution=1024))
    assert g.generate([EFF], [1], GenerationParams(resolution=32)).shape == (1, 32, 32)


def test_onnx_matches_eager(model, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHRAD_CACHE_DIR", str(tmp_path / "cache"))
    from services.common.config import get_settings

    get_settings.cache_clear()
    conds, seeds = [EFF, NORMAL, Condition()], [3, 4, 5]
    e = registry.load_generator(model, "eager", "cpu")
    o = registry.load_generator(model, "onnx", "cpu")
    assert o.backend == "onnx" and "CPUExecutionProvider" in o.runner.providers
    assert list(tmp_path.joinpath("cache", "onnx").glob("*.onnx"))  # the one export, cached on disk
    for params in (None, GenerationParams(truncation=0.6)):
        a, b = e.generate(conds, seeds, params), o.generate(conds, seeds, params)
        assert np.abs(a - b).max() <= ONNX_ATOL
        levels = np.abs(np.round(a * 255).astype(int) - np.round(b * 255).astype(int))
        assert levels.max() <= ONNX_MAX_LEVELS
    # ONNX is deterministic too
    assert np.array_equal(o.generate(conds, seeds), o.generate(conds, seeds))
    get_settings.cache_clear()


def _png_provenance(data: bytes) -> dict:
    return json.loads(Image.open(io.BytesIO(data)).text["synthrad"])


def test_generate_cli_twice_same_marked_images(model, tmp_path):
    from synthrad.cli.main import cli

    out = tmp_path / "batches"
    args = ["generate", "--model", model, "--condition", "pleural effusion, no cardiomegaly", "--n", "3",
            "--seed", "7", "--out", str(out), "--backend", "eager", "--device", "cpu"]
    runs = []
    for _ in range(2):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        batch = r.stdout.strip().splitlines()[-1]
        runs.append(batch)
    from services.common.store import BatchStore

    store = BatchStore(out)
    m1, m2 = (store.get(b.rsplit("/", 1)[-1]) for b in runs)
    assert m1.batch_id != m2.batch_id and m1.count == 3 and m1.model_id == model
    assert [r.seed for r in m1.images] == [7, 8, 9]
    assert m1.images[0].condition == Condition.from_findings(["pleural_effusion"], ["enlarged_cardiac_silhouette"])
    px1 = [img for _, img in store.iter_images(m1.batch_id)]
    px2 = [img for _, img in store.iter_images(m2.batch_id)]
    assert all(np.array_equal(a, b) for a, b in zip(px1, px2))
    prov = _png_provenance(store.read_file(m1.batch_id, m1.images[0].file))
    assert prov["synthetic"] is True and prov["model_id"] == model and prov["seed"] == 7


def test_generate_cli_bad_prompt_is_a_clear_error(model, tmp_path):
    from synthrad.cli.main import cli

    r = CliRunner().invoke(cli, ["generate", "--model", model, "--condition", "pleural effusion. no pleural effusion",
                                 "--n", "1", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "contradictory" in r.output


def test_models_cli_lists_and_shows_card(model):
    from synthrad.cli.main import cli

    r = CliRunner().invoke(cli, ["models", "list"])
    assert r.exit_code == 0 and model in r.output
    r = CliRunner().invoke(cli, ["models", "card", model])
    assert r.exit_code == 0 and model in r.output
