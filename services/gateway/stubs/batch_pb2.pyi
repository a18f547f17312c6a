from services.gateway.stubs import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BatchFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_FORMAT_UNSPECIFIED: _ClassVar[BatchFormat]
    BATCH_FORMAT_PNG: _ClassVar[BatchFormat]
    BATCH_FORMAT_PNG16: _ClassVar[BatchFormat]
    BATCH_FORMAT_DICOM: _ClassVar[BatchFormat]
    BATCH_FORMAT_NPZ: _ClassVar[BatchFormat]
    BATCH_FORMAT_WEBDATASET: _ClassVar[BatchFormat]
BATCH_FORMAT_UNSPECIFIED: BatchFormat
BATCH_FORMAT_PNG: BatchFormat
BATCH_FORMAT_PNG16: BatchFormat
BATCH_FORMAT_DICOM: BatchFormat
BATCH_FORMAT_NPZ: BatchFormat
BATCH_FORMAT_WEBDATASET: BatchFormat

class CreateBatchRequest(_message.Message):
    __slots__ = ("model_id", "condition", "prompt", "count", "seed", "format", "params", "screen")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SCREEN_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    condition: _common_pb2.Condition
    prompt: str
    count: int
    seed: int
    format: BatchFormat
    params: _common_pb2.GenerationParams
    screen: str
    def __init__(self, model_id: _Optional[str] = ..., condition: _Optional[_Union[_common_pb2.Condition, _Mapping]] = ..., prompt: _Optional[str] = ..., count: _Optional[int] = ..., seed: _Optional[int] = ..., format: _Optional[_Union[BatchFormat, str]] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., screen: _Optional[str] = ...) -> None: ...

class ImageEntry(_message.Message):
    __slots__ = ("index", "file", "member", "seed", "condition", "prompt", "sha256", "near_copy")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    NEAR_COPY_FIELD_NUMBER: _ClassVar[int]
    index: int
    file: str
    member: str
    seed: int
    condition: _common_pb2.Condition
    prompt: str
    sha256: str
    near_copy: bool
    def __init__(self, index: _Optional[int] = ..., file: _Optional[str] = ..., member: _Optional[str] = ..., seed: _Optional[int] = ..., condition: _Optional[_Union[_common_pb2.Condition, _Mapping]] = ..., prompt: _Optional[str] = ..., sha256: _Optional[str] = ..., near_copy: _Optional[bool] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("batch_id", "model_id", "model_hash", "backend", "format", "created", "count", "params_json", "images", "screening_json")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SCREENING_JSON_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    model_id: str
    model_hash: str
    backend: str
    format: str
    created: str
    count: int
    params_json: str
    images: _containers.RepeatedCompositeFieldContainer[ImageEntry]
    screening_json: str
    def __init__(self, batch_id: _Optional[str] = ..., model_id: _Optional[str] = ..., model_hash: _Optional[str] = ..., backend: _Optional[str] = ..., format: _Optional[str] = ..., created: _Optional[str] = ..., count: _Optional[int] = ..., params_json: _Optional[str] = ..., images: _Optional[_Iterable[_Union[ImageEntry, _Mapping]]] = ..., screening_json: _Optional[str] = ...) -> None: ...

class ListBatchesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBatchesResponse(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[Batch]
    def __init__(self, batches: _Optional[_Iterable[_Union[Batch, _Mapping]]] = ...) -> None: ...

class GetBatchRequest(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class DeleteBatchResponse(_message.Message):
    __slots__ = ("batch_id", "deleted")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    deleted: bool
    def __init__(self, batch_id: _Optional[str] = ..., deleted: _Optional[bool] = ...) -> None: ...

class StreamBatchImagesRequest(_message.Message):
    __slots__ = ("batch_id", "encoding")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    encoding: _common_pb2.ImageEncoding
    def __init__(self, batch_id: _Optional[str] = ..., encoding: _Optional[_Union[_common_pb2.ImageEncoding, str]] = ...) -> None: ...
