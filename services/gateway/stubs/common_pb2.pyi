from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FindingState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINDING_STATE_UNSPECIFIED: _ClassVar[FindingState]
    FINDING_STATE_ABSENT: _ClassVar[FindingState]
    FINDING_STATE_PRESENT: _ClassVar[FindingState]

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_UNSPECIFIED: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG8: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG16: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_FLOAT32: _ClassVar[ImageEncoding]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
FINDING_STATE_UNSPECIFIED: FindingState
FINDING_STATE_ABSENT: FindingState
FINDING_STATE_PRESENT: FindingState
IMAGE_ENCODING_UNSPECIFIED: ImageEncoding
IMAGE_ENCODING_PNG8: ImageEncoding
IMAGE_ENCODING_PNG16: ImageEncoding
IMAGE_ENCODING_FLOAT32: ImageEncoding
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState

class Condition(_message.Message):
    __slots__ = ("atelectasis", "lung_opacity", "pleural_effusion", "enlarged_cardiac_silhouette", "no_finding", "by_name")
    class ByNameEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FindingState
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FindingState, str]] = ...) -> None: ...
    ATELECTASIS_FIELD_NUMBER: _ClassVar[int]
    LUNG_OPACITY_FIELD_NUMBER: _ClassVar[int]
    PLEURAL_EFFUSION_FIELD_NUMBER: _ClassVar[int]
    ENLARGED_CARDIAC_SILHOUETTE_FIELD_NUMBER: _ClassVar[int]
    NO_FINDING_FIELD_NUMBER: _ClassVar[int]
    BY_NAME_FIELD_NUMBER: _ClassVar[int]
    atelectasis: FindingState
    lung_opacity: FindingState
    pleural_effusion: FindingState
    enlarged_cardiac_silhouette: FindingState
    no_finding: bool
    by_name: _containers.ScalarMap[str, FindingState]
    def __init__(self, atelectasis: _Optional[_Union[FindingState, str]] = ..., lung_opacity: _Optional[_Union[FindingState, str]] = ..., pleural_effusion: _Optional[_Union[FindingState, str]] = ..., enlarged_cardiac_silhouette: _Optional[_Union[FindingState, str]] = ..., no_finding: _Optional[bool] = ..., by_name: _Optional[_Mapping[str, FindingState]] = ...) -> None: ...

class GenerationParams(_message.Message):
    __slots__ = ("steps", "sampler", "guidance", "truncation", "resolution")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    steps: int
    sampler: str
    guidance: float
    truncation: float
    resolution: int
    def __init__(self, steps: _Optional[int] = ..., sampler: _Optional[str] = ..., guidance: _Optional[float] = ..., truncation: _Optional[float] = ..., resolution: _Optional[int] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("index", "seed", "condition", "prompt", "width", "height", "encoding", "data", "model_id", "backend")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    index: int
    seed: int
    condition: Condition
    prompt: str
    width: int
    height: int
    encoding: ImageEncoding
    data: bytes
    model_id: str
    backend: str
    def __init__(self, index: _Optional[int] = ..., seed: _Optional[int] = ..., condition: _Optional[_Union[Condition, _Mapping]] = ..., prompt: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., data: _Optional[bytes] = ..., model_id: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "kind", "state", "done", "total", "batch_id", "error", "created", "updated", "request_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: str
    state: JobState
    done: int
    total: int
    batch_id: str
    error: str
    created: str
    updated: str
    request_json: str
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., batch_id: _Optional[str] = ..., error: _Optional[str] = ..., created: _Optional[str] = ..., updated: _Optional[str] = ..., request_json: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...
