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
