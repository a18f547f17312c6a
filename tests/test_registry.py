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
