"""Model registry: shipped models are JSON descriptors next to their safetensors weights.

``services/generator/weights/<model_id>.json``::

    {"model_id": "stylegan2-cxr64", "family": "stylegan2", "weights": "stylegan2-cxr64.safetensors",
     "resolution": 64, "card": "stylegan2-cxr64.md", "description": "...", "config": {...}}

A descriptor may list ``aliases`` (e.g. ``["stylegan2"]``) accepted wherever a model id is.
Users add their own models with ``synthrad models register`` (writes to ``$SYNTHRAD_HOME/models``) or ``SYNTHRAD_MODEL_DIRS`` (folders holding more descriptors; a
descriptor may point ``weights`` at an absolute path or a diffusers folder, with ``sha256`` to verify).
A family maps to a loader ``load(descriptor, weights_path, backend, device) -> LoadedGenerator``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import threading
from functools import lru_cache
from pathlib import Path

from .base import GeneratorError, LoadedGenerator, ModelInfo

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

FAMILIES: dict[str, str] = {
    "stylegan2": "services.generator.models.stylegan2.loader:load",
    "ddpm": "services.generator.models.ddpm.loader:load",
    "latent_diffusion": "services.generator.models.latent_diffusion.loader:load",
}


class UnknownModel(GeneratorError):
    pass


def _descriptor_dirs() -> list[Path]:
    from services.common.config import get_settings

    dirs = [WEIGHTS_DIR, get_settings().home / "models"]  # home/models: where `synthrad models register` writes
    extra = os.environ.get("SYNTHRAD_MODEL_DIRS", "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs


def _descriptors() -> dict[str, tuple[dict, Path]]:
    out: dict[str, tuple[dict, Path]] = {}
    for d in _descriptor_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.json")):
            try:
                desc = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise GeneratorError(f"model descriptor {f} is not valid JSON: {e}") from e
            if not isinstance(desc, dict) or "model_id" not in desc or "family" not in desc:
                continue
            out[desc["model_id"]] = (desc, f.parent)
    return out


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=64)
def _hash_cached(path: str, mtime: float, size: int) -> str:
    return sha256_file(Path(path))


def weights_hash(path: Path) -> str:
    """sha256 of a weights file, or of a folder's files (sorted relative names + contents)."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            st = f.stat()
            h.update(_hash_cached(str(f), st.st_mtime, st.st_size).encode())
        return h.hexdigest()
    st = path.stat()
    return _hash_cached(str(path), st.st_mtime, st.st_size)


def _aliases(descs: dict[str, tuple[dict, Path]]) -> dict[str, str]:
    """Short names (``"stylegan2"``, ``"ddpm"``) a descriptor lists under ``aliases``."""
    return {a: mid for mid, (d, _) in descs.items() for a in d.get("aliases", []) if a not in descs}


def canonical_model_id(model_id: str) -> str:
    descs = _descriptors()
    return model_id if model_id in descs else _aliases(descs).get(model_id, model_id)


def resolve(model_id: str) -> tuple[dict, Path]:
    """Descriptor and weights path of a model, verifying the sha256 when the descriptor gives one."""
    descs = _descriptors()
    model_id = _aliases(descs).get(model_id, model_id)
    if model_id not in descs:
        known = ", ".join(sorted(descs)) or "(none)"
        raise UnknownModel(f"unknown model {model_id!r}; available models: {known}")
    desc, base = descs[model_id]
    weights = Path(desc["weights"])
    if not weights.is_absolute():
        weights = base / weights
    if not weights.exists():
        raise GeneratorError(f"weights for model {model_id!r} not found at {weights}")
    expected = desc.get("sha256")
    if expected:
        got = weights_hash(weights)
        if got != expected:
            raise GeneratorError(
                f"weights of model {model_id!r} at {weights} have sha256 {got}, expected {expected}; "
                "the file is corrupt or not the checkpoint the descriptor names"
            )
    return desc, weights


def model_info(model_id: str) -> ModelInfo:
    model_id = canonical_model_id(model_id)
    desc, weights = resolve(model_id)
    card = None
    if desc.get("card"):
        card_path = (Path(desc["card"]) if Path(desc["card"]).is_absolute() else weights.parent / desc["card"])
        if card_path.exists():
            card = card_path.read_text()
    return ModelInfo(
        model_id=model_id,
        family=desc["family"],
        resolution=int(desc.get("resolution", 0)),
        model_hash=desc.get("sha256") or weights_hash(weights),
        text_conditioned=bool(desc.get("text_conditioned", False)),
        description=desc.get("description", ""),
        card=card,
    )


def list_models() -> list[ModelInfo]:
    return [model_info(m) for m in sorted(_descriptors())]


_loaded: dict[tuple[str, str, str], LoadedGenerator] = {}
_lock = threading.Lock()


def load_generator(model_id: str, backend: str = "auto", device: str = "auto") -> LoadedGenerator:
    """Load (once per process) a model with a backend: auto | eager | compile | onnx."""
    from services.common.config import get_settings

    if device == "auto":
        device = get_settings().resolved_device()
    model_id = canonical_model_id(model_id)
    key = (model_id, backend, device)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        desc, weights = resolve(model_id)
        family = desc["family"]
        if family not in FAMILIES:
            raise GeneratorError(f"model {model_id!r} has unknown family {family!r}; known: {', '.join(FAMILIES)}")
        mod_name, fn_name = FAMILIES[family].split(":")
        loader = getattr(importlib.import_module(mod_name), fn_name)
        gen = loader(desc, weights, backend, device)
        _loaded[key] = gen
        return gen
