"""Samplers as data: a sampler is a diffusers scheduler class plus config overrides, built with
``from_config`` from a model's base scheduler config (as in diffusers).

A scheduler object holds per-run state (its timesteps, DPM-Solver's model-output history, the step index),
so sharing one across concurrent requests corrupts both: :func:`make_scheduler` builds a new instance for
every request; the tables and base configs are never mutated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from services.generator.base import canonical_sampler


@dataclass(frozen=True)
class SamplerSpec:
    """``scheduler`` (a diffusers scheduler class name) configured as the base config + ``overrides``."""

    scheduler: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


def make_scheduler(samplers: Mapping[str, SamplerSpec], name: str, base_config: Mapping[str, Any]):
    """A new scheduler for sampler ``name`` (any accepted spelling) of the family table ``samplers``."""
    import diffusers

    key = canonical_sampler(name)
    if key not in samplers:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(samplers)}")
    spec = samplers[key]
    return getattr(diffusers, spec.scheduler).from_config(dict(base_config), **dict(spec.overrides))
