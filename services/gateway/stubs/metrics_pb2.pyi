from services.gateway.stubs import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListEvaluationKindsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EvaluationKind(_message.Message):
    __slots__ = ("kind", "summary", "needs_dataset", "options_schema_json")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    NEEDS_DATASET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    kind: str
    summary: str
    needs_dataset: bool
    options_schema_json: str
    def __init__(self, kind: _Optional[str] = ..., summary: _Optional[str] = ..., needs_dataset: _Optional[bool] = ..., options_schema_json: _Optional[str] = ...) -> None: ...

class ListEvaluationKindsResponse(_message.Message):
    __slots__ = ("kinds",)
    KINDS_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedCompositeFieldContainer[EvaluationKind]
    def __init__(self, kinds: _Optional[_Iterable[_Union[EvaluationKind, _Mapping]]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, datasets: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateEvaluationRequest(_message.Message):
    __slots__ = ("batch_ids", "kind", "dataset", "options_json")
    BATCH_IDS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    batch_ids: _containers.RepeatedScalarFieldContainer[str]
    kind: str
    dataset: str
    options_json: str
    def __init__(self, batch_ids: _Optional[_Iterable[str]] = ..., kind: _Optional[str] = ..., dataset: _Optional[str] = ..., options_json: _Optional[str] = ...) -> None: ...

class Headline(_message.Message):
    __slots__ = ("name", "value", "text")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    text: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class EvaluationResult(_message.Message):
    __slots__ = ("job_id", "batch_ids", "kind", "state", "error", "headline", "result_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_IDS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HEADLINE_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    batch_ids: _containers.RepeatedScalarFieldContainer[str]
    kind: str
    state: _common_pb2.JobState
    error: str
    headline: _containers.RepeatedCompositeFieldContainer[Headline]
    result_json: str
    def __init__(self, job_id: _Optional[str] = ..., batch_ids: _Optional[_Iterable[str]] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., error: _Optional[str] = ..., headline: _Optional[_Iterable[_Union[Headline, _Mapping]]] = ..., result_json: _Optional[str] = ...) -> None: ...

class ListReferencesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListReferencesResponse(_message.Message):
    __slots__ = ("references",)
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    references: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, references: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateScoreRequest(_message.Message):
    __slots__ = ("batch_id", "reference", "metrics", "extractor")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EXTRACTOR_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    reference: str
    metrics: _containers.RepeatedScalarFieldContainer[str]
    extractor: str
    def __init__(self, batch_id: _Optional[str] = ..., reference: _Optional[str] = ..., metrics: _Optional[_Iterable[str]] = ..., extractor: _Optional[str] = ...) -> None: ...

class ExtractorStamp(_message.Message):
    __slots__ = ("name", "weights_hash", "preprocessing", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_HASH_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    weights_hash: str
    preprocessing: str
    dtype: str
    def __init__(self, name: _Optional[str] = ..., weights_hash: _Optional[str] = ..., preprocessing: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...

class Score(_message.Message):
    __slots__ = ("name", "value", "std", "ci_low", "ci_high")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    std: float
    ci_low: float
    ci_high: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., std: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("job_id", "batch_id", "reference", "extractor", "scores", "n_real", "n_synthetic", "result_json", "state", "error")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    EXTRACTOR_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    N_REAL_FIELD_NUMBER: _ClassVar[int]
    N_SYNTHETIC_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    batch_id: str
    reference: str
    extractor: ExtractorStamp
    scores: _containers.RepeatedCompositeFieldContainer[Score]
    n_real: int
    n_synthetic: int
    result_json: str
    state: _common_pb2.JobState
    error: str
    def __init__(self, job_id: _Optional[str] = ..., batch_id: _Optional[str] = ..., reference: _Optional[str] = ..., extractor: _Optional[_Union[ExtractorStamp, _Mapping]] = ..., scores: _Optional[_Iterable[_Union[Score, _Mapping]]] = ..., n_real: _Optional[int] = ..., n_synthetic: _Optional[int] = ..., result_json: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., error: _Optional[str] = ...) -> None: ...
