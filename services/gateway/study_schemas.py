"""The REST protocol of reader studies (``/v1/studies``): request and response models (OpenAPI documents them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

STUDY_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
IMAGE_ID_PATTERN = r"^[0-9a-f]{24}$"
CASE_ID_PATTERN = r"^c[0-9a-f]{16}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudyView(BaseModel):
    id: str
    title: str
    instructions: str
    allow_revise: bool
    likert: bool
    modes: list[str]
    n_cases: int
    image_size: int


class OwnerStudyView(StudyView):
    created: str
    seed: int
    design_sha256: str = Field(description="over options, cases, sides and image origins (checked on every read)")


class ReaderView(BaseModel):
    id: str
    name: str


class SessionView(BaseModel):
    study: StudyView
    reader: ReaderView
    answered: int
    total: int
    done: bool
    likert_labels: dict[str, str]


class CaseImage(BaseModel):
    slot: Literal["left", "right", "single"]
    url: str = Field(description="GET it with the same Authorization header (image/png)")


class LikertQuestionView(BaseModel):
    slot: str
    finding: str
    text: str


class LikertAnswer(_Strict):
    slot: Literal["left", "right", "single"]
    finding: str = Field(max_length=64)
    rating: StrictInt = Field(ge=1, le=5, description="1 definitely absent … 5 definitely present")


class StoredAnswer(BaseModel):
    choice: str
    likert: list[LikertAnswer]


class CaseBody(BaseModel):
    case_id: str
    position: int = Field(description="0-based position in this reader's order")
    total: int
    kind: Literal["pair", "single"]
    images: list[CaseImage]
    choices: list[str]
    likert: list[LikertQuestionView]
    answer: StoredAnswer | None = Field(None, description="this reader's answer, when a case is revisited")


class CaseResponse(BaseModel):
    done: bool
    case: CaseBody | None = None


class AnswerRequest(_Strict):
    case_id: str = Field(pattern=CASE_ID_PATTERN)
    choice: Literal["left", "right", "real", "synthetic", "undecided"]
    likert: list[LikertAnswer] = Field(default_factory=list, max_length=64)
    idempotency_key: str = Field(pattern=r"^[A-Za-z0-9_-]{8,100}$",
                                 description="made once per case by the client; a retry sends the same key and "
                                             "gets the first result back (nothing is stored twice)")


class AnswerAck(BaseModel):
    answered: int
    total: int
    done: bool
    replayed: bool = Field(description="true: this key was seen before; the first answer stands")


class ReaderProgress(BaseModel):
    id: str
    name: str
    answered: int
    total: int
    last_answer_at: str | None


class StudyOverview(BaseModel):
    study: OwnerStudyView
    readers: list[ReaderProgress]


class NewReaderRequest(_Strict):
    name: str = Field(min_length=1, max_length=100)


class NewReader(BaseModel):
    reader: ReaderView
    token: str = Field(description="the reader's sign-in token: shown once, only its digest is stored")


__all__ = ["AnswerAck", "AnswerRequest", "CASE_ID_PATTERN", "CaseResponse", "IMAGE_ID_PATTERN", "NewReader",
           "NewReaderRequest", "STUDY_ID_PATTERN", "SessionView", "StudyOverview"]
