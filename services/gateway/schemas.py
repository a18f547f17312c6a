"""REST request/response models (pydantic; they are the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, field_validator, model_validator

from services.common.findings import FINDING_ALIASES, FINDINGS, NO_FINDING, Condition, FindingState
from services.common.store import BATCH_FORMATS
from services.generator.base import GenerationParams, ModelInfo
from services.generator.generation import MAX_PROMPT_CHARS
from services.generator.replica import ServedModel
from services.metrics import defaults as metric_defaults
from services.metrics.api import ALL_METRICS
from services.metrics.extractors import available_extractors

from .jobs import JobRecord

MAX_MODEL_ID_CHARS = 128

#: Id formats (the store's and the job manager's validators are the authority; tests check they agree).
BATCH_ID_PATTERN = r"^[0-9]{8}t[0-9]{6}-[0-9a-f]{12}$"
BATCH_ID_EXAMPLE = "20261127t015959-1a2b3c4d5e6f"
JOB_ID_PATTERN = r"^job-[0-9a-f]{16}$"
JOB_ID_EXAMPLE = "job-0123456789abcdef"
FILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

_CONDITION_DOC = (
    "Per-finding states: {finding: present|absent|unspecified}. Findings: atelectasis, lung_opacity, "
    "pleural_effusion, enlarged_cardiac_silhouette (aliases: " + ", ".join(sorted(FINDING_ALIASES)) + "); "
    "{\"no_finding\": true} = all absent (contradicts any present finding). Omit for an unconditional request."
)
_STATE_SCHEMA = {"type": "string", "enum": [s.value for s in FindingState]}
#: The condition as clients write it (aliases and ``no_finding`` included), not the canonical model's fields.
_CONDITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": _CONDITION_DOC,
    "properties": {**{f: _STATE_SCHEMA for f in (*FINDINGS, *sorted(FINDING_ALIASES))},
                   NO_FINDING: {"type": "boolean"}},
    "additionalProperties": False,
    "examples": [{"pleural_effusion": "present", "cardiomegaly": "absent"}],
}
RequestCondition = Annotated[Condition, WithJsonSchema(_CONDITION_SCHEMA)]


def _text_ok(v: str | None, what: str) -> str | None:
    """Strings must be encodable text: JSON can carry lone surrogates (``"\\ud800"``) that no PNG, log or
    response can hold."""
    if v is not None:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{what} is not valid Unicode text (lone surrogate at position {e.start}); "
                             "send UTF-8 text") from None
    return v


class _GenBase(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, max_length=MAX_MODEL_ID_CHARS,
                              description="Model id (GET /v1/models); default: the platform's default model.",
                              examples=["stylegan2-cxr64"])
    condition: RequestCondition | None = Field(None, description=_CONDITION_DOC)
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS,
                               description="Free-text findings instead of a condition, e.g. 'Large right pleural "
                                           "effusion. No cardiomegaly.'")
    seed: int = Field(0, ge=0, lt=2**63, description="Image i gets seed + i (recorded with every image); "
                                                      "seed + count must stay below 2**63.")
    params: GenerationParams = Field(default_factory=GenerationParams)

    @field_validator("model", "prompt")
    @classmethod
    def _valid_text(cls, v, info):
        return _text_ok(v, info.field_name)

    @model_validator(mode="after")
    def _one_of(self):
        if self.prompt and self.condition is not None:
            raise ValueError("give either 'condition' or 'prompt', not both")
        return self


class GenerateRequest(_GenBase):
    count: int = Field(1, ge=1, description="Images to return inline (at most limits.max_inline_images).")
    format: Literal["png", "png16", "npz"] = Field(
        "png", description="png/png16: one image -> image/png, several -> application/zip of PNGs; "
                           "npz: application/x-npz with arrays images (N,H,W float32 [0,1]), seeds, condition_codes.")


class BatchRequest(_GenBase):
    count: int = Field(..., ge=1, description="Images in the batch (at most limits.max_batch_images).")
    format: Literal[BATCH_FORMATS] = "png"  # type: ignore[valid-type]
    screen: Literal["off", "flag", "drop"] = Field(
        "off", description="Near-copy screening against the model's training-set index: flag marks near copies "
                           "(images[].near_copy), drop leaves them out; the manifest's screening records the index, "
                           "thresholds and seeds.")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_id: str = Field(..., max_length=64, pattern=BATCH_ID_PATTERN,
                          description=f"A stored batch (GET /v1/batches), e.g. {BATCH_ID_EXAMPLE}.",
                          examples=[BATCH_ID_EXAMPLE])
    reference: str | None = Field(None, max_length=128, description="A registered real reference set "
                                                                    "(GET /v1/references); default: the "
                                                                    "platform's default_reference setting.",
                                  examples=["nih-cxr64"])
    metrics: list[str] = Field(default_factory=lambda: list(metric_defaults.METRICS), min_length=1, max_length=16,
                               description=f"One or more of: {', '.join(ALL_METRICS)}, or 'all'.",
                               examples=[["fid", "kid"]])
    extractor: str = Field(metric_defaults.EXTRACTOR, max_length=64,
                           description=f"Feature extractor: {', '.join(available_extractors())}; only 'inception' "
                                       "Fréchet distances are called FID.")

    @field_validator("batch_id", "reference", "extractor")
    @classmethod
    def _valid_text(cls, v, info):
        return _text_ok(v, info.field_name)

    @field_validator("metrics")
    @classmethod
    def _valid_metrics(cls, v):
        for m in v:
            _text_ok(m, "metric name")
        return v


class EvaluationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_ids: list[Annotated[str, StringConstraints(max_length=64, pattern=BATCH_ID_PATTERN)]] = Field(
        ..., min_length=1, max_length=32,
        description="Stored batches of one model (GET /v1/batches), evaluated as one set: a batch has one "
                    "condition, so comparing conditions (present vs absent) takes one batch per condition.",
        examples=[[BATCH_ID_EXAMPLE]])
    kind: str = Field(..., max_length=32, description="utility | conditioning | memorisation | bias | per-finding "
                                                      "(GET /v1/evaluation-kinds lists them with their options).",
                      examples=["conditioning"])
    dataset: str | None = Field(None, max_length=64,
                                description="A configured labelled real dataset (GET /v1/datasets) for the kinds "
                                            "that read one (utility, per-finding; optional for bias, memorisation).",
                                examples=["nih"])
    options: dict = Field(default_factory=dict, description="The kind's options (its JSON schema: GET "
                                                            "/v1/evaluation-kinds); defaults fill the rest.",
                          examples=[{}])

    @field_validator("kind", "dataset")
    @classmethod
    def _valid_text(cls, v, info):
        return _text_ok(v, info.field_name) if v is not None else v


class EvaluationKind(BaseModel):
    kind: str
    summary: str
    needs_dataset: bool
    options: dict = Field(description="JSON schema of the kind's options")


class JobView(BaseModel):
    job_id: str = Field(..., pattern=JOB_ID_PATTERN, examples=[JOB_ID_EXAMPLE])
    kind: str
    state: str
    done: int
    total: int
    progress: float = Field(..., description="done / total in [0, 1]")
    batch_id: str | None = None
    error: str | None = None
    created: str
    updated: str
    started: str | None = None
    finished: str | None = None
    request: dict
    result: dict | None = None
    key_id: str | None = Field(None, description="Id of the API key that submitted the job (never the key).")
    attempt: int = Field(1, description="1 for the first run, +1 each time the job was resumed after the process "
                                        "running it died (0: submitted, not yet started).")
    retries: int = Field(0, description="Generation chunks sent again after a generator replica died.")
    replicas: int = Field(0, description="Generator replicas that made this run's images (batch jobs).")
    links: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, rec: JobRecord) -> "JobView":
        links = {"self": f"/v1/jobs/{rec.job_id}"}
        if rec.batch_id and rec.kind == "batch":
            links.update(batch=f"/v1/batches/{rec.batch_id}", download=f"/v1/batches/{rec.batch_id}/download")
        if rec.kind == "score":
            links["result"] = f"/v1/scores/{rec.job_id}"
        if rec.kind == "evaluation":
            links.update(result=f"/v1/evaluations/{rec.job_id}", report=f"/v1/evaluations/{rec.job_id}/report")
        return cls(job_id=rec.job_id, kind=rec.kind, state=rec.state.value, done=rec.done, total=rec.total,
                   progress=round(rec.progress, 4), batch_id=rec.batch_id, error=rec.error, created=rec.created,
                   updated=rec.updated, started=rec.started, finished=rec.finished, request=rec.request,
                   result=rec.result, key_id=rec.key_id, attempt=rec.attempt, retries=rec.retries,
                   replicas=rec.replicas, links=links)


class ModelView(ModelInfo):
    """A served model: the registry's :class:`ModelInfo` plus where it runs (never which replica answered)."""

    model_config = ConfigDict(protected_namespaces=())

    backend: str | None = None
    device: str | None = None
    is_default: bool = False
    resolutions: str | None = Field(None, description="Output sizes it makes, e.g. '64 (native) or a resize to "
                                                      "16..256' (params.resolution).")
    max_batch_size: int | None = Field(None, description="Images per forward pass of one replica.")

    @classmethod
    def of(cls, served: ServedModel, is_default: bool = False) -> "ModelView":
        return cls(**served.model_dump(exclude={"replica"}), is_default=is_default)


class BatchSummary(BaseModel):
    """A stored batch as listed (GET /v1/batches); GET /v1/batches/{id} adds every image's record."""

    model_config = ConfigDict(protected_namespaces=())

    batch_id: str = Field(..., examples=[BATCH_ID_EXAMPLE])
    model_id: str
    model_hash: str = Field(..., description="sha256 of the model's weights, recorded with every image.")
    backend: str = Field(..., description="eager | compile | onnx")
    format: str = Field(..., description=", ".join(BATCH_FORMATS))
    created: str = Field(..., description="UTC, ISO 8601.")
    count: int
    params: dict = Field(default_factory=dict, description="Generation params as applied (model defaults filled in).")
    links: dict[str, str] = Field(default_factory=dict)


class Readiness(BaseModel):
    ready: bool
    components: dict[str, str] = Field(..., description="component -> 'ok' or why it is not ready")


class FieldError(BaseModel):
    loc: list[str | int] = Field(..., description="where: e.g. ['body', 'params', 'steps'] or ['path', 'batch_id']")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error response of the API (4xx and 5xx) has this JSON body."""

    error: str = Field(..., description="machine-readable kind: invalid_argument, bad_id, bad_request, not_found, "
                                        "method_not_allowed, not_ready, too_large, unsupported_media_type, "
                                        "unauthenticated, forbidden, rate_limited, too_many_jobs, unavailable, "
                                        "internal",
                       examples=["invalid_argument"])
    detail: str = Field(..., description="what is wrong and what to do about it",
                        examples=["seed: Input should be a finite number"])
    errors: list[FieldError] | None = Field(None, description="request validation (422): one entry per problem")
    error_id: str | None = Field(None, description="server errors (500): the id the server logged the details "
                                                   "under; quote it when reporting the problem")
    retry_after_s: float | None = Field(None, description="rate limits (429): seconds until a retry can succeed "
                                                          "(also the Retry-After header)")
