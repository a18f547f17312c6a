"""`synthrad generate --model-path DIR` (a local Stable-Diffusion-format checkpoint such as RoentGen, no hub
access), `--model-sha256` pinning, raw prompts for text-conditioned models, and `synthrad models register`.
Uses the tiny pipeline of tests/support/sd_tiny.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from services.common.codecs import decode_image
from services.common.findings import Condition
from services.common.store import BatchStore
from synthrad.cli.main import cli

PROMPT = "Large right pleural effusion"
RAW_PROMPT = "PA view, 67 year old man, portable"  # names no finding the condition parser knows
FAST = ["--steps", "2", "--sampler", "ddim", "--backend", "eager", "--device", "cpu", "--format", "npz"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd_hash(sd_folder):
    from services.generator.models.latent_diffusion import verify_folder

    return verify_folder(sd_folder, None)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh SYNTHRAD_HOME (so `models register` writes into a registry folder of this test only)."""
    from services.common.config import get_settings

    monkeypatch.setenv("SYNTHRAD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SYNTHRAD_MODEL_DIRS", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def _run(args):
    r = CliRunner().invoke(cli, args)
    return r


def _batch(out, result):
    assert result.exit_code == 0, result.output
    store = BatchStore(out)
    manifest = store.get(result.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1])
    images, provs = [], []
    for rec in manifest.images:
        img, meta = decode_image(store.read_file(manifest.batch_id, rec.file), rec.file)
        images.append(img)
        provs.append(meta["provenance"])
    return manifest, np.stack(images), provs


def test_model_path_writes_a_marked_deterministic_batch(sd_folder, sd_hash, tmp_path):
    out = tmp_path / "batches"
    base = ["generate", "--model-path", str(sd_folder), "--prompt", PROMPT, "--n", "2", "--seed", "5",
            "--out", str(out), *FAST]
    first = _run(base)
    m1, px1, provs = _batch(out, first)
    # unpinned: the folder hash is printed with how to pin it
    assert sd_hash in first.stderr and f"--model-sha256 {sd_hash}" in first.stderr
    assert m1.synthetic and m1.model_id == "tiny-roentgen" and m1.model_hash == sd_hash and m1.count == 2
    assert [r.seed for r in m1.images] == [5, 6] and all(r.prompt == PROMPT for r in m1.images)
    assert m1.images[0].condition == Condition.from_findings(["pleural_effusion"])  # what the prompt says
    for seed, prov in zip([5, 6], provs):
        assert prov.synthetic is True and prov.model_id == "tiny-roentgen" and prov.model_hash == sd_hash
        assert prov.seed == seed and prov.prompt == PROMPT
    assert px1.shape == (2, 16, 16) and np.abs(px1[0] - px1[1]).mean() > 1e-4  # seeds differ

    # pinned with the right hash and a chosen id: same seed -> the same pixels
    second = _run([*base, "--model-sha256", sd_hash.upper(), "--model-id", "roentgen-local"])
    m2, px2, provs2 = _batch(out, second)
    assert "--model-sha256" not in second.stderr
    assert m2.batch_id != m1.batch_id and m2.model_id == "roentgen-local" and m2.model_hash == sd_hash
    assert provs2[0].model_id == "roentgen-local"
    np.testing.assert_array_equal(px1, px2)


def test_prompt_goes_raw_to_the_text_encoder(sd_folder, sd_hash, tmp_path):
    from services.generator.base import GenerationParams
    from services.generator.models.latent_diffusion import load_path

    out = tmp_path / "batches"
    r = _run(["generate", "--model-path", str(sd_folder), "--model-sha256", sd_hash, "--prompt", RAW_PROMPT,
              "--n", "1", "--seed", "3", "--out", str(out), *FAST])
    m, px, provs = _batch(out, r)  # a prompt the findings parser cannot read is fine for a text model
    assert "text encoder" in r.stderr
    assert m.images[0].prompt == RAW_PROMPT and provs[0].prompt == RAW_PROMPT
    assert m.images[0].condition == Condition()  # recorded as unspecified
    gen = load_path(sd_folder, "eager", "cpu", sha256=sd_hash)
    params = GenerationParams(steps=2, sampler="ddim")
    raw = gen.generate([Condition()], [3], params, prompts=[RAW_PROMPT])
    np.testing.assert_allclose(px[0], raw[0], atol=1e-6)  # exactly the raw text's image
    other = gen.generate([Condition()], [3], params, prompts=[PROMPT])
    assert np.abs(px[0] - other[0]).mean() > 1e-4


def test_wrong_or_malformed_sha256_is_refused(sd_folder, sd_hash, tmp_path):
    wrong = "0" * 64
    out = tmp_path / "batches"
    r = _run(["generate", "--model-path", str(sd_folder), "--model-sha256", wrong, "--prompt", PROMPT,
              "--n", "1", "--out", str(out), *FAST])
    assert r.exit_code != 0
    assert wrong in r.output and sd_hash in r.output and "refusing" in r.output
    assert not out.exists() or not list(out.iterdir())  # nothing written
    r = _run(["generate", "--model-path", str(sd_folder), "--model-sha256", "abc", "--n", "1", "--out", str(out)])
    assert r.exit_code == 2 and "64 hex digits" in r.output
    r = _run(["generate", "--model", "ddpm", "--model-path", str(sd_folder), "--n", "1", "--out", str(out)])
    assert r.exit_code == 2 and "not both" in r.output
    r = _run(["generate", "--model-path", str(sd_folder / "unet"), "--n", "1", "--out", str(out), *FAST])
    assert r.exit_code != 0 and "model_index.json" in r.output


def test_register_then_generate_by_id(sd_folder, sd_hash, home, tmp_path):
    out = tmp_path / "batches"
    r = _run(["models", "register", str(sd_folder), "--model-id", "tiny-roentgen-reg", "--sampler", "ddim",
              "--steps", "2"])
    assert r.exit_code == 0, r.output
    desc_file = home / "models" / "tiny-roentgen-reg.json"
    assert r.stdout.strip() == str(desc_file) and "warning" not in r.stderr
    desc = json.loads(desc_file.read_text())
    assert desc["sha256"] == sd_hash and desc["family"] == "latent_diffusion" and desc["resolution"] == 16
    assert desc["config"] == {"sampler": "ddim", "steps": 2}

    r = _run(["models", "list"])
    assert r.exit_code == 0 and "tiny-roentgen-reg" in r.output
    # registered again under the same id: refused unless --force
    r = _run(["models", "register", str(sd_folder), "--model-id", "tiny-roentgen-reg"])
    assert r.exit_code != 0 and "already registered" in r.output and "--force" in r.output
    r = _run(["models", "register", str(sd_folder), "--model-id", "tiny-roentgen-reg", "--sampler", "ddim",
              "--steps", "2", "--force"])
    assert r.exit_code == 0, r.output
    r = _run(["models", "register", str(sd_folder), "--model-id", "../evil"])
    assert r.exit_code == 2

    # generate by id: descriptor defaults (ddim, 2 steps) give the same pixels as --model-path with them
    r = _run(["generate", "--model", "tiny-roentgen-reg", "--prompt", PROMPT, "--n", "1", "--seed", "5",
              "--out", str(out), "--backend", "eager", "--device", "cpu", "--format", "npz"])
    m, px, provs = _batch(out, r)
    assert m.model_id == "tiny-roentgen-reg" and m.model_hash == sd_hash
    assert provs[0].synthetic is True and provs[0].prompt == PROMPT and provs[0].seed == 5
    r = _run(["generate", "--model-path", str(sd_folder), "--prompt", PROMPT, "--n", "1", "--seed", "5",
              "--out", str(out), *FAST])
    _, px_path, _ = _batch(out, r)
    np.testing.assert_array_equal(px, px_path)


def test_register_elsewhere_warns_until_scanned(sd_folder, home, tmp_path, monkeypatch):
    from services.generator import registry

    elsewhere = tmp_path / "descriptors"
    r = _run(["models", "register", str(sd_folder), "--model-id", "tiny-roentgen-x", "--out", str(elsewhere)])
    assert r.exit_code == 0, r.output
    assert "SYNTHRAD_MODEL_DIRS" in r.stderr and (elsewhere / "tiny-roentgen-x.json").exists()
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(elsewhere))
    assert registry.model_info("tiny-roentgen-x").text_conditioned
