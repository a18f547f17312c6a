"""Model registry: shipped models are JSON descriptors next to their safetensors weights.

``services/generator/weights/<model_id>.json``::

    {"model_id": "stylegan2-cxr64", "family": "stylegan2", "weights": "stylegan2-cxr64.safetensors",
     "resolution": 64, "card": "stylegan2-cxr64.md", "description": "...", "config": {...}}

A descriptor may list ``aliases`` (e.g. ``["stylegan2"]``) accepted wherever a model id is.
Descriptor folders, in order (:func:`descriptor_dirs`): the shipped ``weights/``, ``$SYNTHRAD_HOME/models``
(where :func:`register_model` writes by default) and ``settings.model_dirs`` (``SYNTHRAD_MODEL_DIRS``). A
descriptor may point ``weights`` at an absolute path or a diffusers folder, with ``sha256`` to verify.
A family maps to a loader ``load(descriptor, weights_path, backend, device) -> LoadedGenerator``.

Registering a model (this module is the one place with the rules): :func:`register_model` checks the id
(:data:`MODEL_ID_RE`, not taken by another model or alias, replaced only with ``force`` in its own folder),
hashes the weights and writes the descriptor.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .base import GeneratorError, LoadedGenerator, ModelInfo

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

FAMILIES: dict[str, str] = {
    "stylegan2": "services.generator.models.stylegan2.loader:load",
    "ddpm": "services.generator.models.ddpm.loader:load",
    "latent_diffusion": "services.generator.models.latent_diffusion.loader:load",
}


class UnknownModel(GeneratorError):
    pass


def default_register_dir() -> Path:
    """``$SYNTHRAD_HOME/models``: where :func:`register_model` writes unless told otherwise."""
    from services.common.config import get_settings

    return get_settings().home / "models"


def descriptor_dirs() -> list[Path]:
    """The folders the registry reads descriptors from, in order. An id known from an earlier folder is taken
    over by a later one only when that descriptor says ``"replaces": <id>`` (an export made with --replace)."""
    from services.common.config import get_settings

    return [WEIGHTS_DIR, default_register_dir(), *(Path(p) for p in get_settings().model_dirs)]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        from services.common.logging import get_logger

        get_logger(__name__).warning(message)


def _scan() -> tuple[dict[str, tuple[dict, Path]], dict[str, Path], dict[Path, str]]:
    """Descriptors by model id (with their folder), the descriptor file of each id, and the unreadable
    descriptor files (file -> error). One unreadable file does not hide the other models."""
    out: dict[str, tuple[dict, Path]] = {}
    files: dict[str, Path] = {}
    bad: dict[Path, str] = {}
    for d in descriptor_dirs():
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
            mid = desc["model_id"]
            if mid in out and desc.get("replaces") != mid and files[mid].parent != f.parent:
                # an id already known from an earlier folder (a shipped model above all) is only taken over by
                # a descriptor that says so (an export made with --replace); anything else would silently
                # change what the id serves
                _warn_once(f"model descriptor {f} uses the id {mid!r} of the model in {files[mid].parent} and "
                           f"is ignored; rename it, or re-export with --replace to serve it as {mid!r}")
                continue
            out[mid] = (desc, f.parent)
            files[mid] = f
    return out, files, bad


def _descriptors() -> dict[str, tuple[dict, Path]]:
    return _scan()[0]


def known_ids() -> set[str]:
    """Every registered model id and alias."""
    descs = _descriptors()
    return set(descs) | set(_aliases(descs))


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
    """Short names (``"stylegan2"``, ``"ddpm"``) a descriptor lists under ``aliases``, except those that are
    some model's id."""
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


def pick_model(name: str, models: list[ModelInfo], default: str) -> str:
    """THE model-name rule of the CLI, REST and gRPC: a model id among ``models`` is itself; a family name
    (``stylegan2``, ``ddpm``) means that family's model — ``default`` when it is one of them, else its first
    working one. Anything else is :class:`UnknownModel` naming the ids and families there are."""
    ids = [m.model_id for m in models]
    if name in ids:
        return name
    family = [m for m in models if m.family == name]
    usable = [m for m in family if m.status == "ok"] or family  # a broken one only if nothing else: its error shows
    if usable:
        return default if any(m.model_id == default for m in usable) else usable[0].model_id
    shown = repr(name) if len(name) <= 80 else repr(name[:76]) + "…"
    families = sorted({m.family for m in models})
    raise UnknownModel(f"unknown model {shown}; this platform serves: {', '.join(sorted(ids)) or '(none)'}"
                       + (f" (or a family: {', '.join(families)})" if families else ""))


def model_or_family(name: str) -> str:
    """:func:`pick_model` over the registered models (``synthrad generate --model``)."""
    from services.common.config import get_settings

    try:
        resolve(name)
        return name
    except UnknownModel:
        if name not in FAMILIES:
            raise
    return pick_model(name, list_models(), get_settings().default_model)


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
        from services.generator.backends import BackendError

        try:
            gen = loader(desc, weights, backend, device)
        except BackendError as e:  # a backend / device the request asked for, not the weights
            raise GeneratorError(f"model {model_id!r}: {e}") from e
        except (GeneratorError, MemoryError):
            raise
        except Exception as e:  # safetensors' SafetensorError, a truncated file, tensors that do not fit...
            if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError: the device, not the file
                raise
            raise GeneratorError(
                f"weights of model {model_id!r} at {weights} cannot be loaded: {type(e).__name__}: {e}; "
                "re-export or re-register the model"
            ) from e
        _loaded[key] = gen
        return gen


# ---- registering a model -----------------------------------------------------------------------------------
#: What a model id may look like: 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit.
MODEL_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class RegistrationError(GeneratorError):
    """A model that cannot be registered as asked (id taken, descriptor exists, ...)."""


class InvalidModelId(RegistrationError):
    """A model id that does not match :data:`MODEL_ID_RE`."""


@dataclass(frozen=True)
class Registration:
    descriptor: dict[str, Any]
    path: Path  #: the descriptor file written
    scanned: bool  #: whether the registry reads that folder (else it must be added to ``model_dirs``)


def check_model_id(model_id: str) -> None:
    if not re.match(MODEL_ID_RE, model_id):
        raise InvalidModelId(f"{model_id!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
                             "or digit)")


def is_scanned(folder: Path) -> bool:
    """Whether ``folder`` is one of :func:`descriptor_dirs`."""
    folder = Path(folder).expanduser().resolve()
    return any(d.expanduser().resolve() == folder for d in descriptor_dirs())


def check_registrable(model_id: str, out_dir: Path, force: bool = False) -> Path:
    """The descriptor file ``model_id`` would be written to in ``out_dir``, or :class:`RegistrationError`:
    an id registered in another folder, or in this one without ``force``; an alias of another model; an
    existing file without ``force``."""
    check_model_id(model_id)
    out_dir = Path(out_dir)
    target = out_dir / f"{model_id}.json"
    descs = _descriptors()
    existing = descs.get(model_id)
    replaceable = existing is not None and Path(existing[1]).resolve() == out_dir.resolve() and target.exists()
    if existing is not None and not (force and replaceable):
        hint = " (use --force to replace it)" if replaceable else "; choose another --model-id"
        raise RegistrationError(f"model id {model_id!r} is already registered in {existing[1]}{hint}")
    alias_of = {a: mid for mid, (d, _) in descs.items() for a in d.get("aliases", [])}.get(model_id)
    if alias_of:
        raise RegistrationError(f"{model_id!r} is an alias of model {alias_of!r}; choose another --model-id")
    if target.exists() and not force:
        raise RegistrationError(f"{target} exists (use --force to replace it)")
    return target


def register_model(path: str | Path, model_id: str, out_dir: str | Path | None = None, *, force: bool = False,
                   sampler: str | None = None, steps: int | None = None, guidance: float | None = None) -> Registration:
    """Register a local Stable-Diffusion-format diffusers folder (``latent_diffusion``) as ``model_id``.

    Writes ``out_dir/<model_id>.json`` (default :func:`default_register_dir`) with the folder's sha256 and the
    given sampling defaults; the weights stay where they are and are hashed again on every load."""
    from services.generator.models.latent_diffusion.loader import canonical_defaults, make_descriptor

    check_model_id(model_id)
    out_dir = Path(out_dir).expanduser().resolve() if out_dir else default_register_dir()
    config = canonical_defaults({"sampler": sampler, "steps": steps, "guidance": guidance})
    target = check_registrable(model_id, out_dir, force)
    desc = make_descriptor(path, model_id, out_dir=out_dir, **config)
    return Registration(descriptor=desc, path=target, scanned=is_scanned(out_dir))
