"""The generator interface every model family implements (pure Python/torch, no Ray).

Determinism contract: image ``i`` of a call depends only on the model weights, ``seeds[i]``,
``conditions[i]`` (and ``prompts[i]``), the generation params and the backend — never on which other
images share the batch. Implementations draw each image's noise from its own ``torch.Generator``
seeded with ``seeds[i]``, and run fixed-size micro-batches
(:func:`services.generator.backends.micro_batch.fixed_micro_batches`: every forward pass has the same shape),
which makes this hold bit for bit.

Prompts are parsed once, by the caller: a class-conditional model (``text_conditioned = False``) generates
from ``conditions`` only and ignores ``prompts`` (beyond checking there is one per image); the caller turns a
prompt into a :class:`Condition` first and passes prompts only to text-conditioned models, which read them
raw.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common.findings import Condition


#: Canonical sampler names (diffusion families).
SAMPLERS = ("ddpm", "ddim", "dpmpp")
#: Accepted spellings of the samplers (case and surrounding spaces ignored) -> canonical name.
SAMPLER_ALIASES: dict[str, str] = {
    "ancestral": "ddpm", "dpm++": "dpmpp", "dpm-solver++": "dpmpp", "dpmsolver++": "dpmpp", "dpm_solver++": "dpmpp",
    "dpmpp_2m": "dpmpp", "dpm": "dpmpp",
}


def canonical_sampler(name: str) -> str:
    """The canonical name of a sampler spelling; ``ValueError`` naming the choices for an unknown one."""
    key = str(name).strip().lower()
    key = SAMPLER_ALIASES.get(key, key)
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return key


class GenerationParams(BaseModel):
    """Per-request knobs. ``None`` means the model's default. A family refuses knobs it does not use
    (:meth:`LoadedGenerator.check_params`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int | None = Field(None, ge=1, le=1000, description="Sampler steps (diffusion).")
    sampler: Literal["ddpm", "ddim", "dpmpp"] | None = Field(None, description="ddpm | ddim | dpmpp (diffusion).")
    guidance: float | None = Field(None, ge=0.0, le=50.0, allow_inf_nan=False,
                                   description="Classifier-free guidance scale (diffusion).")
    truncation: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False,
                                     description="Truncation psi (StyleGAN2).")
    resolution: int | None = Field(None, ge=16, le=1024,
                                   description="Output size in px; the model's native resolution (GET /v1/models) or "
                                               "a resize it supports (refused with 422 naming the sizes otherwise).")

    @field_validator("sampler", mode="before")
    @classmethod
    def _canonical_sampler(cls, v: Any) -> Any:
        if isinstance(v, str):
            key = v.strip().lower()
            return SAMPLER_ALIASES.get(key, key)
        return v

    def batch_key(self) -> tuple:
        """Requests with equal keys can share one forward pass."""
        return (self.steps, self.sampler, self.guidance, self.truncation, self.resolution)


class ModelInfo(BaseModel):
    model_id: str
    family: str
    resolution: int
    model_hash: str
    text_conditioned: bool = False
    description: str = ""
    card: str | None = None  # model card markdown (filled by the registry)
    status: str = "ok"  # "broken": registered, but its descriptor / weights cannot be used (see ``error``)
    error: str | None = None


ALL_PARAMS: frozenset[str] = frozenset(GenerationParams.model_fields)


class GeneratorError(ValueError):
    """Invalid generation request for this model (maps to 4xx / INVALID_ARGUMENT).

    Generator errors are raised inside Ray replicas and rebuilt in the gateway, so every subclass must survive
    pickling whatever its ``__init__`` takes: :meth:`__reduce__` rebuilds from ``args`` and ``__dict__``
    without calling ``__init__`` (a subclass with extra constructor arguments, like :class:`UnusedParam`,
    otherwise arrives as Ray's ``UnserializableException`` — an HTTP 500)."""

    def __reduce__(self):
        return _rebuild_error, (type(self), self.args, dict(self.__dict__))


def _rebuild_error(cls: type, args: tuple, state: dict) -> BaseException:
    exc = cls.__new__(cls)
    BaseException.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class UnusedParam(GeneratorError):
    """A generation parameter the model's family does not use (``param`` names it)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class UnsupportedResolution(GeneratorError):
    """A ``resolution`` the model cannot make (``resolution`` / ``native`` say which)."""

    def __init__(self, message: str, resolution: int, native: int):
        super().__init__(message)
        self.resolution = resolution
        self.native = native


class LoadedGenerator(ABC):
    """A model loaded on a device with a backend, ready to generate."""

    model_id: str
    model_hash: str
    family: str
    backend: str
    device: str
    resolution: int
    text_conditioned: bool = False
    #: The :class:`GenerationParams` fields this family reads; :meth:`check_params` refuses the others.
    uses_params: frozenset[str] = ALL_PARAMS
    #: Output sizes besides the native ``resolution`` (families that read ``resolution`` resize their native
    #: output): from ``min_resolution`` px up to ``max_resize_factor`` x native, multiples of
    #: ``resolution_multiple``. A family that can only make its native size sets ``max_resize_factor = 1``;
    #: one with other rules overrides :meth:`check_resolution`.
    min_resolution: int = 16
    max_resize_factor: float = 4.0
    resolution_multiple: int = 1

    @abstractmethod
    def generate(
        self,
        conditions: Sequence[Condition],
        seeds: Sequence[int],
        params: GenerationParams | None = None,
        prompts: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Return ``(N, H, W)`` float32 images in [0, 1], one per (condition, seed). ``prompts`` are read only
        by text-conditioned models (see the module docstring)."""

    def info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self.model_id,
            family=self.family,
            resolution=self.resolution,
            model_hash=self.model_hash,
            text_conditioned=self.text_conditioned,
        )

    def check_params(self, params: GenerationParams | None) -> None:
        """Raise :class:`UnusedParam` (a :class:`GeneratorError`) for a parameter set in ``params`` that this
        model does not use, rather than accepting it silently (and recording it as if it had an effect)."""
        if params is None:
            return
        for name in params.model_dump(exclude_none=True):
            if name not in self.uses_params:
                takes = ", ".join(sorted(self.uses_params)) or "none"
                raise UnusedParam(f"model {self.model_id!r} ({self.family}) does not use {name!r}; "
                                  f"its parameters: {takes}", name)
        if params.resolution is not None:
            self.check_resolution(int(params.resolution))

    def resolution_range(self) -> tuple[int, int, int]:
        """``(smallest, largest, multiple)`` output size in px this model makes (native size included)."""
        native = int(self.resolution)
        if "resolution" not in self.uses_params or self.max_resize_factor <= 1:
            return native, native, 1
        step = max(1, int(self.resolution_multiple))
        lo = min(native, -(-int(self.min_resolution) // step) * step)
        hi = max(native, int(native * self.max_resize_factor) // step * step)
        return lo, hi, step

    def describe_resolutions(self) -> str:
        lo, hi, step = self.resolution_range()
        if lo == hi:
            return f"{lo} only"
        multiple = f" in multiples of {step}" if step > 1 else ""
        return f"{self.resolution} (native) or a resize to {lo}..{hi}{multiple}"

    def check_resolution(self, resolution: int) -> None:
        """Raise :class:`UnsupportedResolution` unless this model can make ``resolution`` px images.

        Called by :meth:`check_params`, which the gateway asks before it accepts a request (inline or batch),
        so a size the model cannot make is refused at submission, never by a failed job."""
        if resolution == int(self.resolution):
            return
        lo, hi, step = self.resolution_range()
        if not (lo <= resolution <= hi and resolution % step == 0):
            raise UnsupportedResolution(
                f"model {self.model_id!r} makes {self.resolution} px images and cannot make {resolution} px; "
                f"resolution: {self.describe_resolutions()}", resolution, int(self.resolution))

    def resolved_params(self, params: GenerationParams | None) -> dict:
        """The parameters a generation with ``params`` actually uses, model defaults filled in (recorded in
        batch manifests). Families with defaults override this."""
        return (params or GenerationParams()).model_dump(exclude_none=True)

    @staticmethod
    def check_inputs(conditions: Sequence[Condition], seeds: Sequence[int], prompts: Sequence[str | None] | None) -> None:
        if len(conditions) != len(seeds):
            raise GeneratorError(f"got {len(conditions)} conditions for {len(seeds)} seeds; give one per image")
        if prompts is not None and len(prompts) != len(seeds):
            raise GeneratorError(f"got {len(prompts)} prompts for {len(seeds)} seeds; give one per image")
        for s in seeds:
            if not 0 <= int(s) < 2**63:
                raise GeneratorError(f"seed {s} out of range [0, 2**63)")


def to_unit_images(x) -> np.ndarray:
    """Model output tensor (N, 1, H, W) in [-1, 1] -> numpy (N, H, W) float32 in [0, 1]."""
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, 0]
    return np.clip((x + 1.0) * 0.5, 0.0, 1.0)
