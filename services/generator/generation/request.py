"""What a caller asks for: :class:`GenerationRequest` (the same object whether it came from the CLI, REST,
gRPC or a resumed job's record)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.common.findings import Condition
from services.common.screening import ScreenAction
from services.generator.base import GenerationParams, GeneratorError

#: Longest free-text prompt accepted (REST and gRPC refuse longer ones before anything is queued).
MAX_PROMPT_CHARS = 2000


class InvalidRequest(GeneratorError):
    """A generation request that cannot be planned (count, seed, prompt, limits); maps to 4xx / INVALID_ARGUMENT."""


class InvalidPrompt(InvalidRequest):
    """A prompt a class-conditional model cannot use: the findings parser could not read it."""


class GenerationRequest(BaseModel):
    """Images to generate: one condition (or one free-text prompt) for ``count`` images with seeds
    ``seed, seed + 1, ...``. ``model=None`` means the platform's default model."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model: str | None = None
    condition: Condition | None = None
    prompt: str | None = None
    count: int = 1
    seed: int = 0
    params: GenerationParams = Field(default_factory=GenerationParams)
    #: near-copy screening of a stored batch against the model's training set: ``flag`` stores every image and
    #: marks near copies (``ImageRecord.near_copy``), ``drop`` leaves them out; both record the seeds in the
    #: manifest's ``screening``. Needs a service built with a screener factory.
    screen: ScreenAction = "off"

    def record(self) -> dict:
        """The JSON a job records so that it can be planned again after a restart (see :meth:`from_record`)."""
        out = {"model": self.model, "count": self.count, "seed": self.seed,
               "condition": (self.condition or Condition()).to_json_dict(), "prompt": self.prompt,
               "params": self.params.model_dump(exclude_none=True)}
        if self.screen != "off":  # records of unscreened jobs read as before
            out["screen"] = self.screen
        return out

    @classmethod
    def from_record(cls, data: dict) -> "GenerationRequest":
        prompt = data.get("prompt") or None
        return cls(model=data.get("model"), count=int(data["count"]), seed=int(data.get("seed", 0)), prompt=prompt,
                   condition=None if prompt else Condition.model_validate(data.get("condition") or {}),
                   params=GenerationParams.model_validate(data.get("params") or {}),
                   screen=data.get("screen") or "off")
