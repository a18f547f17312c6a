"""`synthrad generate` / `synthrad models` on bad input: clear usage errors (exit 2) naming the option instead of
tracebacks or pydantic dumps, parameters a model family does not use refused, the resolved parameters recorded in
the manifest, broken registered models listed as broken, a missing model card reported."""

from __future__ import annotations

import json
import uuid

import pytest
import torch
from click.testing import CliRunner
from stylegan2_tiny import make_model

from services.common.store import BatchStore
from services.generator.base import GenerationParams, GeneratorError
from synthrad.cli.main import cli


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """Fresh settings and a registry folder of this test only."""
    from services.common.config import get_settings

    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("SYNTHRAD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(models))
    monkeypatch.delenv("SYNTHRAD_LIMITS__MAX_BATCH_IMAGES", raising=False)
    get_settings.cache_clear()
    yield models
    get_settings.cache_clear()


@pytest.fixture
def sg2(env):
    return make_model(env)


@pytest.fixture
def ddpm(env):
    from services.generator.models.ddpm.model import DEFAULT_SCHEDULE, ConditionalUNet, save_weights, unet_config

    model_id = f"ddpm-test-{uuid.uuid4().hex[:8]}"
    torch.manual_seed(0)
    save_weights(ConditionalUNet(unet_config("tiny", 16)), env / f"{model_id}.safetensors", dtype=torch.float32)
    desc = {"model_id": model_id, "family": "ddpm", "weights": f"{model_id}.safetensors", "resolution": 16,
            "config": {"unet": unet_config("tiny", 16), "schedule": DEFAULT_SCHEDULE,
                       "defaults": {"sampler": "ddim", "steps": 4, "guidance": 2.0}}}
    (env / f"{model_id}.json").write_text(json.dumps(desc))
    return model_id


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def usage_error(r, *needles):
    """Exit 2 (click usage error), the needles in the message, and no traceback / pydantic dump."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    for needle in needles:
        assert needle in r.output, (needle, r.output)
    for dump in ("Traceback", "validation error", "pydantic", "input_value"):
        assert dump not in r.output, r.output


def batches(out):
    return BatchStore(out).list() if out.exists() else []


def manifest_params(out, r):
    assert r.exit_code == 0, r.output
    batch_id = r.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]
    return BatchStore(out).get(batch_id).params


# ---- 1. --device ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu0"])
def test_unknown_device_is_a_usage_error(sg2, tmp_path, device):
    r = run("generate", "--model", sg2, "--n", 1, "--out", tmp_path / "o", "--device", device)
    usage_error(r, "--device", repr(device), "cuda:N")
    assert not batches(tmp_path / "o")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_usage_error(sg2, tmp_path):
    r = run("generate", "--model", sg2, "--n", 1, "--out", tmp_path / "o", "--device", "cuda:0")
    usage_error(r, "--device", "no CUDA GPU")


# ---- 2. parameter and condition validation -------------------------------------------------------------------
@pytest.mark.parametrize("args, needles", [
    (["--steps", -3], ["--steps", "must be between 1 and 1000", "-3"]),
    (["--steps", 1001], ["--steps", "must be between 1 and 1000"]),
    (["--truncation", 50], ["--truncation", "must be between 0.0 and 2.0"]),
    (["--guidance", -1], ["--guidance", "must be between 0.0 and 50.0"]),
    (["--sampler", "foo"], ["--sampler", "'foo' is not one of ddpm, ddim or dpmpp"]),
    (["--condition", '{"pneumothorax": "present"}'], ["--condition", "unknown finding 'pneumothorax'", "atelectasis"]),
    (["--condition", '{"pleural_effusion": "maybe"}'], ["--condition", "invalid state 'maybe'"]),
    (["--condition", "{bad json"], ["--condition", "not a valid JSON object"]),
    (["--condition", "pleural effusion. no pleural effusion"], ["--condition", "contradictory"]),
])
def test_invalid_values_name_the_option(sg2, tmp_path, args, needles):
    r = run("generate", "--model", sg2, "--n", 1, "--out", tmp_path / "o", "--device", "cpu", *args)
    usage_error(r, *needles)
    assert not batches(tmp_path / "o")


def test_unparsable_prompt_for_a_findings_model_names_prompt(sg2, tmp_path):
    r = run("generate", "--model", sg2, "--n", 1, "--out", tmp_path / "o", "--device", "cpu",
            "--prompt", "PA view, portable")
    usage_error(r, "--prompt", "no finding recognised")


# ---- 3. parameters a family does not use; resolved parameters in the manifest --------------------------------
@pytest.mark.parametrize("args, option", [(["--sampler", "ddim"], "--sampler"), (["--steps", 5], "--steps"),
                                          (["--guidance", 3], "--guidance")])
def test_stylegan2_refuses_diffusion_options(sg2, tmp_path, args, option):
    r = run("generate", "--model", sg2, "--n", 1, "--out", tmp_path / "o", "--device", "cpu", "--backend", "eager",
            *args)
    usage_error(r, option, f"{sg2} (stylegan2) does not use {option}", "--truncation")
    assert not batches(tmp_path / "o")


def test_stylegan2_manifest_records_resolved_truncation(sg2, tmp_path):
    out = tmp_path / "o"
    base = ["generate", "--model", sg2, "--n", 1, "--out", out, "--device", "cpu", "--backend", "eager"]
    assert manifest_params(out, run(*base)) == {"truncation": 1.0}
    assert manifest_params(out, run(*base, "--truncation", 0.7)) == {"truncation": 0.7}


def test_ddpm_refuses_truncation_and_records_its_defaults(ddpm, tmp_path):
    out = tmp_path / "o"
    base = ["generate", "--model", ddpm, "--n", 1, "--out", out, "--device", "cpu", "--backend", "eager"]
    usage_error(run(*base, "--truncation", 0.5), "--truncation", f"{ddpm} (ddpm) does not use --truncation")
    # descriptor defaults (ddim, guidance 2.0) filled in; the given steps and sampler spelling canonicalised
    assert manifest_params(out, run(*base, "--steps", 2)) == {"sampler": "ddim", "steps": 2, "guidance": 2.0}
    assert manifest_params(out, run(*base, "--steps", 1, "--sampler", "DPM++")) == {
        "sampler": "dpmpp", "steps": 1, "guidance": 2.0}


def test_check_params_and_sampler_literal():
    from services.generator.base import LoadedGenerator, UnusedParam

    class Fake(LoadedGenerator):
        model_id, family = "fake-1", "fake"
        uses_params = frozenset({"truncation"})

        def generate(self, conditions, seeds, params=None, prompts=None):  # pragma: no cover
            raise NotImplementedError

    g = Fake()
    g.check_params(GenerationParams(truncation=0.5))
    g.check_params(None)
    with pytest.raises(UnusedParam, match="'fake-1' \\(fake\\) does not use 'steps'") as e:
        g.check_params(GenerationParams(steps=3))
    assert isinstance(e.value, GeneratorError) and e.value.param == "steps"
    assert g.resolved_params(GenerationParams(truncation=0.5)) == {"truncation": 0.5}
    assert GenerationParams(sampler=" DPM++ ").sampler == "dpmpp"
    with pytest.raises(ValueError):
        GenerationParams(sampler="foo")


# ---- 4. broken models ----------------------------------------------------------------------------------------
def test_corrupt_weights_are_a_clear_error(env, tmp_path):
    (env / "rotten.safetensors").write_bytes(b"\x00" * 64)
    (env / "rotten.json").write_text(json.dumps({"model_id": "rotten", "family": "stylegan2",
                                                 "weights": "rotten.safetensors", "resolution": 16}))
    r = run("generate", "--model", "rotten", "--n", 1, "--out", tmp_path / "o", "--device", "cpu")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "weights of model 'rotten'" in r.output and "cannot be loaded" in r.output
    assert "re-export or re-register" in r.output


def test_models_list_shows_broken_models(sg2, env):
    (env / "gone.json").write_text(json.dumps({"model_id": "gone", "family": "ddpm", "weights": "gone.safetensors",
                                               "resolution": 64}))
    r = run("models", "list")
    assert r.exit_code == 0, r.output
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert "BROKEN" not in lines[sg2]
    assert "BROKEN" in lines["gone"] and "not found" in lines["gone"]
    r = run("models", "list", "--json")
    rows = {m["model_id"]: m for m in json.loads(r.stdout)}
    assert rows[sg2]["status"] == "ok" and rows["gone"]["status"] == "broken" and rows["gone"]["error"]


# ---- 5. model card -------------------------------------------------------------------------------------------
def test_missing_card_file_is_reported(sg2, env):
    desc_file = env / f"{sg2}.json"
    desc = json.loads(desc_file.read_text())
    desc["card"] = "nowhere.md"
    desc_file.write_text(json.dumps(desc))
    r = run("models", "card", sg2)
    assert r.exit_code == 1 and "no model card" not in r.output
    assert "missing" in r.output and str(env / "nowhere.md") in r.output
    (env / "nowhere.md").write_text(f"# {sg2} card")
    r = run("models", "card", sg2)
    assert r.exit_code == 0 and f"# {sg2} card" in r.output


# ---- 6. --n cap and help -------------------------------------------------------------------------------------
def test_n_is_capped_by_the_batch_limit(sg2, tmp_path, monkeypatch):
    from services.common.config import get_settings

    usage_error(run("generate", "--model", sg2, "--n", 10_001, "--out", tmp_path / "o"),
                "--n", "10000", "max_batch_images")
    monkeypatch.setenv("SYNTHRAD_LIMITS__MAX_BATCH_IMAGES", "2")
    get_settings.cache_clear()
    usage_error(run("generate", "--model", sg2, "--n", 3, "--out", tmp_path / "o"), "--n", "(2, ")
    assert not batches(tmp_path / "o")


def test_help_documents_n_format_and_device():
    r = run("generate", "--help")
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert "Number of images in the batch" in text and "max_batch_images" in text
    assert "png16 (16-bit)" in text and "webdataset" in text
    assert "cuda:N" in text
