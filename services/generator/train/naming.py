"""The id a training run exports under: never a registered model's id by accident.

A run exports under ``--model-id`` or, by default, ``<family>-<run folder name>``. An id (or alias) that the
registry already knows — a shipped model above all — is refused before training starts unless ``--replace``
is given; the export then records ``"replaces": <id>`` and the registry lets it take that id's place (see
``registry.descriptor_dirs``). Continuing a shipped model (``--resume-from``) exports under a new id too, unless told
to replace it.
"""

from __future__ import annotations

import re
from pathlib import Path


class ModelIdTaken(ValueError):
    """The export id is a registered model's id or alias and ``--replace`` was not given."""


def default_model_id(family: str, out: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(out).resolve().name).strip("-._") or "run"
    return f"{family}-{stem}"[:64]


def _exported_by(model_id: str, out: Path) -> bool:
    """Whether the registered ``model_id`` lives inside the run folder ``out`` (this run exported it)."""
    from services.generator import registry

    f = registry.descriptor_file(model_id)
    if f is None:
        return False
    try:
        f.resolve().relative_to(Path(out).resolve())
    except ValueError:
        return False
    return True


def export_model_id(model_id: str | None, family: str, out: Path, replace: bool, continues: str | None = None) -> str:
    """The checked export id (:class:`ModelIdTaken` / :class:`~services.generator.registry.InvalidModelId`)."""
    from services.generator import registry

    mid = model_id or default_model_id(family, out)
    registry.check_model_id(mid)
    if replace:
        return mid
    owner = registry.canonical_model_id(mid)
    if owner == mid and _exported_by(mid, out):
        return mid  # this run's own earlier export (a --resume of the same run folder)
    if owner in registry.known_ids():
        what = f"the id of registered model {owner!r}" if owner == mid else f"an alias of model {owner!r}"
        hint = (f" (this run continues {continues!r}: a continued model gets a new id unless --replace)"
                if continues else "")
        raise ModelIdTaken(f"--model-id {mid!r} is {what}{hint}; choose another --model-id, or pass --replace to "
                           "export over it (the export then takes that id's place wherever its folder is on "
                           "SYNTHRAD_MODEL_DIRS)")
    return mid
