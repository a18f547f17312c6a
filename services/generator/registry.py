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


def _scan() -> tuple[dict[str, tuple[dict, Path]], dict[str, Path], dict[Path, str]]:
    """Descriptors by model id (with their folder), the descriptor file of each id, and the unreadable
    descriptor files (file -> error). One unreadable file does not hide the other models."""
    out: dict[str, tuple[dict, Path]] = {}
    files: dict[str, Path] = {}
    bad: dict[Path, str] = {}
    for d in _descriptor_dirs():
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.json")):
            try:
                desc = json.loads(f.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                bad[f] = f"model descriptor {f} is not valid JSON: {e}"
                continue
            if not isinstance(desc, dict) or "model_id" not in desc or "family" not in desc:
                continue
            out[desc["model_id"]] = (desc, f.parent)
            files[desc["model_id"]] = f
    return out, files, bad


def _descriptors() -> dict[str, tuple[dict, Path]]:
    return _scan()[0]


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


def _weights_path(desc: dict, base: Path) -> Path:
    weights = Path(desc["weights"])
    return weights if weights.is_absolute() else base / weights


def resolve(model_id: str) -> tuple[dict, Path]:
    """Descriptor and weights path of a model, verifying the sha256 when the descriptor gives one."""
    descs, files, bad = _scan()
    model_id = _aliases(descs).get(model_id, model_id)
    if model_id not in descs:
        known = ", ".join(sorted(descs)) or "(none)"
        unreadable = "".join(f"; unreadable descriptor: {err}" for err in bad.values())
        raise UnknownModel(f"unknown model {model_id!r}; available models: {known}{unreadable}")
    desc, base = descs[model_id]
    if "weights" not in desc:
        raise GeneratorError(f"model descriptor {files[model_id]} of {model_id!r} names no \"weights\"")
    weights = _weights_path(desc, base)
    if not weights.exists():
        raise GeneratorError(
            f"weights for model {model_id!r} not found at {weights} (named by its descriptor {files[model_id]}); "
            f"restore the weights there (or fix \"weights\" in the descriptor), re-register the model "
            f"(`synthrad models register DIR --model-id {model_id} --force` for a diffusers folder), "
            "or delete the descriptor to unregister it"
        )
    expected = desc.get("sha256")
    if expected:
        got = weights_hash(weights)
        if got != expected:
            raise GeneratorError(
                f"weights of model {model_id!r} at {weights} have sha256 {got}, expected {expected}; "
                "the file is corrupt or not the checkpoint the descriptor names"
            )
    return desc, weights


def card_path(model_id: str) -> Path | None:
    """Where the model card the descriptor names is expected (``None``: the descriptor names no card).
    A relative ``card`` is looked up next to the descriptor, then next to the weights."""
    descs = _descriptors()
    model_id = _aliases(descs).get(model_id, model_id)
    if model_id not in descs or not descs[model_id][0].get("card"):
        return None
    desc, base = descs[model_id]
    card = Path(desc["card"])
    if card.is_absolute():
        return card
    candidates = [base / card]
    if "weights" in desc:
        candidates.append(_weights_path(desc, base).parent / card)
    return next((c for c in candidates if c.exists()), candidates[0])


def descriptor_file(model_id: str) -> Path | None:
    descs, files, _ = _scan()
    return files.get(_aliases(descs).get(model_id, model_id))


def model_info(model_id: str) -> ModelInfo:
    model_id = canonical_model_id(model_id)
    desc, weights = resolve(model_id)
    card = None
    path = card_path(model_id)
    if path is not None and path.is_file():
        card = path.read_text()
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
    """Every registered model. One that cannot be used (missing or mismatching weights, unreadable
    descriptor) is listed with ``status="broken"`` and ``error`` instead of failing the whole listing."""
    descs, _, bad = _scan()
    out = []
    for m in sorted(descs):
        try:
            out.append(model_info(m))
        except (OSError, ValueError, TypeError, KeyError) as e:  # GeneratorError is a ValueError
            desc = descs[m][0]
            try:
                res = int(desc.get("resolution", 0))
            except (TypeError, ValueError):
                res = 0
            out.append(ModelInfo(model_id=m, family=str(desc.get("family")), resolution=res,
                                 model_hash=str(desc.get("sha256") or ""),
                                 text_conditioned=bool(desc.get("text_conditioned", False)),
                                 description=str(desc.get("description", "")), status="broken", error=str(e)))
    for f, err in bad.items():
        out.append(ModelInfo(model_id=f.stem, family="?", resolution=0, model_hash="", status="broken", error=err))
    return out


_loaded: dict[tuple[str, str, str], LoadedGenerator] = {}
_lock = threading.Lock()


def load_generator(model_id: str, backend: str = "auto", device: str = "auto") -> LoadedGenerator:
    """Load (once per process) a model with a backend: auto | eager | compile | onnx."""
    from services.common.config import get_settings, resolve_device

    try:
        device = get_settings().resolved_device() if device == "auto" else resolve_device(device)
    except ValueError as e:
        raise GeneratorError(str(e)) from e
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
        try:
            gen = loader(desc, weights, backend, device)
        except (GeneratorError, MemoryError):
            raise
        except Exception as e:  # safetensors' SafetensorError, a truncated file, tensors that do not fit...
            if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError: the device, not the file
                raise
            from services.generator.backends import BackendError

            if isinstance(e, BackendError):  # a backend / device the request asked for, not the weights
                raise GeneratorError(f"model {model_id!r}: {e}") from e
            raise GeneratorError(
                f"weights of model {model_id!r} at {weights} cannot be loaded: {type(e).__name__}: {e}; "
                "re-export or re-register the model"
            ) from e
        _loaded[key] = gen
        return gen
