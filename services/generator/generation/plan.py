"""Planning: a :class:`GenerationRequest` checked against the limits and the model, made into a
:class:`GenerationPlan` — one condition (and prompt) per image, seeds ``seed + i``, the params as the model
applies them. The prompt is parsed here and nowhere else.

Prompt rule: a class-conditional model gets the condition parsed from the prompt (an unreadable prompt is
refused, naming what was understood); a text-conditioned model gets the raw prompt in its text encoder, and the
recorded condition is what the parser understood (unspecified when it understood nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.config import Limits
from services.common.findings import Condition
from services.common.prompts import PromptError, parse_prompt
from services.common.provenance import Origin, Provenance
from services.generator.base import GenerationParams
from services.generator.chunks import GenChunk
from services.generator.replica import ServedModel

from .request import MAX_PROMPT_CHARS, GenerationRequest, InvalidPrompt, InvalidRequest


@dataclass(frozen=True)
class GenerationPlan:
    """A validated request, ready to run: image ``i`` has ``conditions[i]``, ``seeds[i]`` and ``prompts[i]``."""

    request: GenerationRequest
    model: ServedModel
    conditions: list[Condition]
    seeds: list[int]
    #: raw prompts for a text-conditioned model, else None (class-conditional models never see the prompt)
    prompts: list[str | None] | None
    #: ``request.params`` as the model applies them, its defaults filled in (recorded in manifests)
    resolved_params: dict = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def params(self) -> GenerationParams:
        return self.request.params

    @property
    def prompt(self) -> str | None:
        return self.request.prompt

    @property
    def condition(self) -> Condition:
        return self.conditions[0] if self.conditions else (self.request.condition or Condition())

    @property
    def count(self) -> int:
        return len(self.seeds)

    @property
    def origin(self) -> Origin:
        """What every image of this plan records about its maker."""
        return Origin(model_id=self.model.model_id, model_hash=self.model.model_hash, backend=self.model.backend,
                      params=dict(self.resolved_params))

    def provenance(self, i: int, batch_id: str | None = None) -> Provenance:
        return self.origin.stamp(self.seeds[i], self.conditions[i], self.prompt, batch_id)

    def record(self) -> dict:
        """The request as a job records it (the model resolved, so a resumed job uses the same one)."""
        return {**self.request.record(), "model": self.model_id}

    def chunks(self, size: int, start: int = 0) -> list[GenChunk]:
        """Chunks of at most ``size`` images from image ``start`` on (pixels never depend on the boundaries)."""
        c = max(1, int(size))
        return [
            GenChunk(conditions=self.conditions[i:i + c], seeds=self.seeds[i:i + c], params=self.params,
                     prompts=self.prompts[i:i + c] if self.prompts is not None else None)
            for i in range(start, self.count, c)
        ]


def check_request(request: GenerationRequest, limits: Limits, max_images: int, what: str) -> None:
    """Count, seed range, prompt length and the params' limits (before the model is asked anything)."""
    count, seed = int(request.count), int(request.seed)
    if count < 1:
        raise InvalidRequest(f"count must be at least 1 (got {count})")
    if count > max_images:
        raise InvalidRequest(f"count {count} exceeds the limit of {max_images} images for {what}")
    p = request.params
    if p.resolution is not None and p.resolution > limits.max_resolution:
        raise InvalidRequest(f"resolution {p.resolution} exceeds the limit {limits.max_resolution}")
    if p.steps is not None and p.steps > limits.max_steps:
        raise InvalidRequest(f"steps {p.steps} exceeds the limit {limits.max_steps}")
    if seed < 0 or seed + count > 2**63:
        raise InvalidRequest(f"seed must be in [0, 2**63 - count] (image i gets seed + i); got {seed} "
                             f"for {count} image(s)")
    prompt = (request.prompt or "").strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are accepted")
    if prompt and request.condition is not None and request.condition != Condition():
        raise InvalidRequest("give either a condition or a prompt, not both")


def make_plan(request: GenerationRequest, model: ServedModel, resolved_params: dict) -> GenerationPlan:
    """The plan of a request already checked by :func:`check_request`, for ``model``."""
    prompt = (request.prompt or "").strip() or None
    request = request.model_copy(update={"prompt": prompt, "count": int(request.count), "seed": int(request.seed)})
    prompts = None
    if prompt is None:
        cond = request.condition or Condition()
    elif model.text_conditioned:
        try:
            cond = parse_prompt(prompt)  # recorded with the images; the model reads the raw prompt
        except PromptError:
            cond = Condition()
        prompts = [prompt] * request.count
    else:
        try:
            cond = parse_prompt(prompt)
        except PromptError as e:  # it lists what was understood
            raise InvalidPrompt(str(e)) from None
    return GenerationPlan(request=request, model=model, conditions=[cond] * request.count,
                          seeds=[request.seed + i for i in range(request.count)], prompts=prompts,
                          resolved_params=dict(resolved_params))
