from engram.v1 import provider_pb2 as _provider_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import client_pb2 as _client_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import field_info_pb2 as _field_info_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProviderSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVIDER_SOURCE_UNSPECIFIED: _ClassVar[ProviderSource]
    PROVIDER_SOURCE_ENVIRONMENT: _ClassVar[ProviderSource]
    PROVIDER_SOURCE_ORGANIZATION: _ClassVar[ProviderSource]
PROVIDER_SOURCE_UNSPECIFIED: ProviderSource
PROVIDER_SOURCE_ENVIRONMENT: ProviderSource
PROVIDER_SOURCE_ORGANIZATION: ProviderSource

class CreateProviderRequest(_message.Message):
    __slots__ = ("provider", "request_id")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    provider: _provider_pb2.Provider
    request_id: str
    def __init__(self, provider: _Optional[_Union[_provider_pb2.Provider, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetProviderRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListProvidersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListProvidersResponse(_message.Message):
    __slots__ = ("providers", "next_page_token")
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedCompositeFieldContainer[_provider_pb2.Provider]
    next_page_token: str
    def __init__(self, providers: _Optional[_Iterable[_Union[_provider_pb2.Provider, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateProviderRequest(_message.Message):
    __slots__ = ("provider", "update_mask")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    provider: _provider_pb2.Provider
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, provider: _Optional[_Union[_provider_pb2.Provider, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteProviderRequest(_message.Message):
    __slots__ = ("name", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("provider_name",)
    PROVIDER_NAME_FIELD_NUMBER: _ClassVar[int]
    provider_name: str
    def __init__(self, provider_name: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "providers")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    providers: _containers.RepeatedCompositeFieldContainer[ProviderModels]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., providers: _Optional[_Iterable[_Union[ProviderModels, _Mapping]]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("handle", "model", "provider_name", "provider", "source", "provider_type")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    model: str
    provider_name: str
    provider: str
    source: ProviderSource
    provider_type: _provider_pb2.ProviderType
    def __init__(self, handle: _Optional[str] = ..., model: _Optional[str] = ..., provider_name: _Optional[str] = ..., provider: _Optional[str] = ..., source: _Optional[_Union[ProviderSource, str]] = ..., provider_type: _Optional[_Union[_provider_pb2.ProviderType, str]] = ...) -> None: ...

class ProviderModels(_message.Message):
    __slots__ = ("provider_name", "provider", "source", "provider_type", "model_count", "error_reason", "error_message")
    PROVIDER_NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    provider_name: str
    provider: str
    source: ProviderSource
    provider_type: _provider_pb2.ProviderType
    model_count: int
    error_reason: str
    error_message: str
    def __init__(self, provider_name: _Optional[str] = ..., provider: _Optional[str] = ..., source: _Optional[_Union[ProviderSource, str]] = ..., provider_type: _Optional[_Union[_provider_pb2.ProviderType, str]] = ..., model_count: _Optional[int] = ..., error_reason: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...
