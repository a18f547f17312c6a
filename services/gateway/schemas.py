"""REST request/response models (pydantic; they are the OpenAPI schema at ``/openapi.json``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.common.findings import Condition
from services.generator.base import GenerationParams, ModelInfo

from .jobs import JobRecord

MAX_PROMPT_CHARS = 2000

_CONDITION_DOC = (
    "Per-finding states: {finding: present|absent|unspecified}. Findings: atelectasis, lung_opacity, "
    "pleural_effusion, enlarged_cardiac_silhouette (alias cardiomegaly); {\"no_finding\": true} = all absent. "
    "Omit for an unconditional request."
)


class _GenBase(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="Model id (GET /v1/models); default: the platform's default model.",
                              examples=["stylegan2-cxr64"])
    condition: Condition | None = Field(None, description=_CONDITION_DOC,
                                        examples=[{"pleural_effusion": "present", "cardiomegaly": "absent"}])
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS,
                               description="Free-text findings instead of a condition, e.g. 'Large right pleural "
                                           "effusion. No cardiomegaly.'")
    seed: int = Field(0, ge=0, lt=2**63, description="Image i gets seed + i (recorded with every image).")
    params: GenerationParams = Field(default_factory=GenerationParams)

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
    format: Literal["png", "png16", "dicom", "npz", "webdataset"] = "png"


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_id: str = Field(..., max_length=64)
    reference: str = Field("nih-cxr64", max_length=128, description="A registered real reference set.")
    metrics: list[str] = Field(default_factory=lambda: ["fid"], max_length=16,
                               description="fid, kid, ipr, prdc, spatial, svm, variety")
    extractor: str = Field("inception", max_length=64,
                           description="Feature extractor; only 'inception' scores are called FID.")


class JobView(BaseModel):
    job_id: str
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
    links: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, rec: JobRecord) -> "JobView":
        links = {"self": f"/v1/jobs/{rec.job_id}"}
        if rec.batch_id and rec.kind == "batch":
            links.update(batch=f"/v1/batches/{rec.batch_id}", download=f"/v1/batches/{rec.batch_id}/download")
        if rec.kind == "score":
            links["result"] = f"/v1/scores/{rec.job_id}"
        return cls(job_id=rec.job_id, kind=rec.kind, state=rec.state.value, done=rec.done, total=rec.total,
                   progress=round(rec.progress, 4), batch_id=rec.batch_id, error=rec.error, created=rec.created,
                   updated=rec.updated, started=rec.started, finished=rec.finished, request=rec.request,
                   result=rec.result, links=links)


class ModelView(ModelInfo):
    """A served model: the registry's :class:`ModelInfo` plus where it runs (extra keys such as
    ``replica`` / ``max_batch_size`` from the generator deployment are passed through)."""

    model_config = ConfigDict(protected_namespaces=(), extra="allow")

    backend: str | None = None
    device: str | None = None
    is_default: bool = False


class BatchSummary(BaseModel):
    batch_id: str
    model_id: str
    model_hash: str
    backend: str
    format: str
    created: str
    count: int
    params: dict = Field(default_factory=dict)
    links: dict[str, str] = Field(default_factory=dict)


class ErrorBody(BaseModel):
    error: str
    detail: str
