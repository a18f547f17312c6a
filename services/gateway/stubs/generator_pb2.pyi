from services.gateway.stubs import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "family", "resolution", "model_hash", "text_conditioned", "description", "card", "backend", "device", "is_default")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    TEXT_CONDITIONED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CARD_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    family: str
    resolution: int
    model_hash: str
    text_conditioned: bool
    description: str
    card: str
    backend: str
    device: str
    is_default: bool
    def __init__(self, model_id: _Optional[str] = ..., family: _Optional[str] = ..., resolution: _Optional[int] = ..., model_hash: _Optional[str] = ..., text_conditioned: _Optional[bool] = ..., description: _Optional[str] = ..., card: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., is_default: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model_id", "condition", "prompt", "count", "seed", "params", "encoding")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    condition: _common_pb2.Condition
    prompt: str
    count: int
    seed: int
    params: _common_pb2.GenerationParams
    encoding: _common_pb2.ImageEncoding
    def __init__(self, model_id: _Optional[str] = ..., condition: _Optional[_Union[_common_pb2.Condition, _Mapping]] = ..., prompt: _Optional[str] = ..., count: _Optional[int] = ..., seed: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., encoding: _Optional[_Union[_common_pb2.ImageEncoding, str]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.GeneratedImage]
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.GeneratedImage, _Mapping]]] = ...) -> None: ...

class ReadyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReadyResponse(_message.Message):
    __slots__ = ("ready", "components")
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    READY_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    components: _containers.ScalarMap[str, str]
    def __init__(self, ready: _Optional[bool] = ..., components: _Optional[_Mapping[str, str]] = ...) -> None: ...
