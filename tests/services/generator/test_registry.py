import hashlib
import json

import pytest

from services.generator import registry
from services.generator.base import GeneratorError


def _descriptor(tmp_path, **extra):
    w = tmp_path / "w.bin"
    w.write_bytes(b"weights")
    d = {"model_id": "toy-1", "family": "stylegan2", "weights": "w.bin", "resolution": 64, "aliases": ["toy"], **extra}
    (tmp_path / "toy-1.json").write_text(json.dumps(d))
    return hashlib.sha256(b"weights").hexdigest()


def test_user_model_dir_alias_and_hash(tmp_path, monkeypatch):
    digest = _descriptor(tmp_path)
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tmp_path))
    info = registry.model_info("toy")
    assert info.model_id == "toy-1" and info.model_hash == digest and info.resolution == 64


def test_hash_mismatch_is_refused(tmp_path, monkeypatch):
    _descriptor(tmp_path, sha256="0" * 64)
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tmp_path))
    with pytest.raises(GeneratorError, match="expected 0000"):
        registry.resolve("toy-1")


def test_unknown_model_lists_available(tmp_path, monkeypatch):
    _descriptor(tmp_path)
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tmp_path))
    with pytest.raises(registry.UnknownModel, match="available models: .*toy-1"):
        registry.resolve("nope")


def test_corrupt_weights_without_sha256_is_a_generator_error(tmp_path, monkeypatch):
    """No sha256 in the descriptor, so only loading finds out: the family loader's own error (safetensors'
    SafetensorError here) becomes a GeneratorError naming the model, the file and what to do."""
    _descriptor(tmp_path)  # w.bin holds b"weights": not a safetensors file
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tmp_path))
    with pytest.raises(GeneratorError, match=r"weights of model 'toy-1' at .*w\.bin cannot be loaded: .*re-export"):
        registry.load_generator("toy-1", "eager", "cpu")


def test_missing_weights_names_the_descriptor_and_the_remedy(tmp_path, monkeypatch):
    _descriptor(tmp_path)
    (tmp_path / "w.bin").unlink()
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tmp_path))
    with pytest.raises(GeneratorError) as e:
        registry.resolve("toy-1")
    msg = str(e.value)
    assert "not found at" in msg and str(tmp_path / "toy-1.json") in msg
    assert "restore" in msg and "register" in msg


def test_list_models_survives_broken_models(tmp_path, monkeypatch):
    digest = _descriptor(tmp_path)
    gone = {"model_id": "gone-1", "family": "stylegan2", "weights": "missing.safetensors", "resolution": 64}
    (tmp_path / "gone-1.json").write_text(json.dumps(gone))
    bad_hash = {"model_id": "badhash-1", "family": "stylegan2", "weights": "w.bin", "sha256": "1" * 64}
    (tmp_path / "badhash-1.json").write_text(json.dumps(bad_hash))
    (tmp_path / "garbled.json").write_text("{not json")
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tmp_path))
    models = {m.model_id: m for m in registry.list_models()}
    assert models["toy-1"].status == "ok" and models["toy-1"].model_hash == digest and models["toy-1"].error is None
    assert models["gone-1"].status == "broken" and "not found" in models["gone-1"].error
    assert models["badhash-1"].status == "broken" and "expected 1111" in models["badhash-1"].error
    assert models["garbled"].status == "broken" and "not valid JSON" in models["garbled"].error
    # a broken descriptor elsewhere does not stop a good model from resolving
    assert registry.model_info("toy-1").model_hash == digest


def test_card_path_next_to_the_descriptor(tmp_path, monkeypatch):
    _descriptor(tmp_path, card="toy-1.md")
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tmp_path))
    assert registry.card_path("toy") == tmp_path / "toy-1.md"
    assert registry.model_info("toy").card is None
    (tmp_path / "toy-1.md").write_text("# toy card")
    assert registry.model_info("toy").card == "# toy card"


# ---- where descriptors are read from; registering a model ------------------------------------------------------
def test_descriptor_dirs_come_from_settings(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    _descriptor(b)
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", json.dumps([str(a), str(b)]))  # the JSON-list form
    dirs = registry.descriptor_dirs()
    assert dirs[0] == registry.WEIGHTS_DIR and dirs[1] == registry.default_register_dir() and dirs[2:] == [a, b]
    assert registry.model_info("toy").model_id == "toy-1"
    assert registry.is_scanned(b) and not registry.is_scanned(tmp_path)


def test_register_model_rules(tmp_path, monkeypatch):
    """The rules live in the registry (the CLI only maps the errors): a valid id, not taken by another model
    or an alias, replaced only with force in its own folder; the sampler checked and canonical."""
    _descriptor(tmp_path)  # toy-1, alias "toy"
    monkeypatch.setenv("SYNTHRAD_MODEL_DIRS", str(tmp_path))
    folder = tmp_path / "pipeline"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    with pytest.raises(registry.InvalidModelId):
        registry.register_model(folder, "../evil")
    with pytest.raises(registry.RegistrationError, match="already registered in"):
        registry.register_model(folder, "toy-1")
    with pytest.raises(registry.RegistrationError, match="alias of model 'toy-1'"):
        registry.register_model(folder, "toy")
    with pytest.raises(GeneratorError, match="unknown sampler 'euler'"):
        registry.register_model(folder, "sd-x", sampler="euler")
    reg = registry.register_model(folder, "sd-x", sampler="DPM++", steps=3)
    assert reg.path == registry.default_register_dir() / "sd-x.json" and reg.scanned
    assert json.loads(reg.path.read_text())["config"] == {"sampler": "dpmpp", "steps": 3}
    assert registry.resolve("sd-x")[0]["sha256"] == registry.weights_hash(folder)
    with pytest.raises(registry.RegistrationError, match="use --force"):
        registry.register_model(folder, "sd-x")
    assert registry.register_model(folder, "sd-x", force=True).path == reg.path
    elsewhere = registry.register_model(folder, "sd-y", tmp_path / "unscanned")
    assert not elsewhere.scanned and elsewhere.path.exists()


# ---- backends: one meaning of auto ----------------------------------------------------------------------------
def test_auto_backend_is_one_rule_for_every_family():
    from services.generator.backends import BackendError, default_fp16, resolve_backend

    # CPU: ONNX Runtime where the family has it, else eager (tests/services/generator/backends/test_backends.py)
    assert resolve_backend("auto", "cpu") == resolve_backend(None, "cpu") == "onnx"
    assert resolve_backend("auto", "cpu", ("eager", "compile"), "latent diffusion") == "eager"
    assert resolve_backend("auto", "cuda") == resolve_backend(" AUTO ", "cuda:1") == "compile"
    assert default_fp16("compile", "cuda:0") and not default_fp16("compile", "cpu") and not default_fp16("eager", "cuda")
    with pytest.raises(BackendError, match="unknown backend 'tensorrt'"):
        resolve_backend("tensorrt", "cpu")
    with pytest.raises(BackendError, match="not available for latent diffusion models; use eager or compile"):
        resolve_backend("onnx", "cpu", ("eager", "compile"), "latent diffusion")
    assert issubclass(BackendError, GeneratorError)


def test_compile_falls_back_to_eager_when_compilation_fails(monkeypatch):
    import torch

    from services.generator import backends
    from services.generator.backends import torch_runner

    def broken(module, mode=None, dynamic=None):
        def fn(*a):
            raise RuntimeError("no C++ compiler")
        return fn

    monkeypatch.setattr(torch_runner, "compile_module", broken)
    lin = torch.nn.Linear(3, 2)
    r = backends.build_runner(lin, [torch.zeros(1, 3)], ["x"], "compile", "cpu")
    x = torch.randn(4, 3)
    assert not r.fell_back
    assert torch.equal(r(x), lin(x).detach()) and r.fell_back and r.name == "compile"


# ---- model cards: one renderer ---------------------------------------------------------------------------------
def _conditioning_result():
    findings = {f: {"threshold": 0.5, "real_heldout": {"auc": 0.7, "balanced_accuracy": 0.6},
                    "generated": {"auc": 0.65, "accuracy": 0.6, "mean_prob_present": 0.5, "mean_prob_absent": 0.4}}
                for f in ("atelectasis", "lung_opacity", "pleural_effusion", "enlarged_cardiac_silhouette")}
    return {"model_id": "m", "n_per_condition": 10, "n_valid": 20, "findings": findings}


@pytest.mark.parametrize("model_id", ["stylegan2-cxr64", "ddpm-cxr64"])
def test_cards_render_every_family_from_its_descriptor(model_id):
    from services.generator import cards

    desc, _ = registry.resolve(model_id)
    card = cards.describe(desc, conditioning=_conditioning_result(), samples="grid.png")
    assert card.family == desc["family"] and card.sha256 == desc["sha256"]
    text = cards.render(card)
    shipped = registry.model_info(model_id).card
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    for h in ("## Samples", "## Model", "## Data", "## Training", "## Conditional agreement", "## Limitations"):
        assert h in headings, h
    assert text.startswith(f"# {model_id} — ") and "Synthetic images only" in text and "![samples](grid.png)" in text
    assert "| pleural_effusion | 0.700 | 0.600 | 0.650 | 0.600 | 0.50 / 0.40 |" in text
    assert "| lung_opacity | stand-in: `Infiltration`" in text  # the NIH label mapping
    for line in shipped.splitlines():  # the shipped card's key facts are in the re-rendered one
        if line.startswith("- Noise schedule") or line.startswith("- Truncation") or line.startswith("- Determinism"):
            assert line in text


def test_generic_card_for_families_without_a_describer():
    from services.generator import cards

    desc = {"model_id": "roentgen", "family": "latent_diffusion", "resolution": 512, "text_conditioned": True,
            "sha256": "ab" * 32, "description": "SD checkpoint", "config": {"sampler": "dpmpp"}}
    text = cards.render(cards.describe(desc))
    assert text.startswith("# roentgen — SD checkpoint") and "text-conditioned" in text and "ab" * 32 in text
    assert "## Conditional agreement" not in text
