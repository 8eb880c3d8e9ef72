import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProviderType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVIDER_TYPE_UNSPECIFIED: _ClassVar[ProviderType]
    PROVIDER_TYPE_OPENAI: _ClassVar[ProviderType]
    PROVIDER_TYPE_ANTHROPIC: _ClassVar[ProviderType]
    PROVIDER_TYPE_AZURE_OPENAI: _ClassVar[ProviderType]
    PROVIDER_TYPE_GROQ: _ClassVar[ProviderType]
    PROVIDER_TYPE_OPENROUTER: _ClassVar[ProviderType]
    PROVIDER_TYPE_TOGETHER: _ClassVar[ProviderType]
    PROVIDER_TYPE_OLLAMA: _ClassVar[ProviderType]
    PROVIDER_TYPE_VLLM: _ClassVar[ProviderType]
    PROVIDER_TYPE_LM_STUDIO: _ClassVar[ProviderType]
    PROVIDER_TYPE_LLAMA_CPP: _ClassVar[ProviderType]
    PROVIDER_TYPE_OPENAI_COMPATIBLE: _ClassVar[ProviderType]
PROVIDER_TYPE_UNSPECIFIED: ProviderType
PROVIDER_TYPE_OPENAI: ProviderType
PROVIDER_TYPE_ANTHROPIC: ProviderType
PROVIDER_TYPE_AZURE_OPENAI: ProviderType
PROVIDER_TYPE_GROQ: ProviderType
PROVIDER_TYPE_OPENROUTER: ProviderType
PROVIDER_TYPE_TOGETHER: ProviderType
PROVIDER_TYPE_OLLAMA: ProviderType
PROVIDER_TYPE_VLLM: ProviderType
PROVIDER_TYPE_LM_STUDIO: ProviderType
PROVIDER_TYPE_LLAMA_CPP: ProviderType
PROVIDER_TYPE_OPENAI_COMPATIBLE: ProviderType

class Provider(_message.Message):
    __slots__ = ("name", "id", "provider_name", "provider_type", "base_url", "api_key", "has_api_key", "api_key_hint", "create_time", "update_time", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_NAME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_TYPE_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    HAS_API_KEY_FIELD_NUMBER: _ClassVar[int]
    API_KEY_HINT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    provider_name: str
    provider_type: ProviderType
    base_url: str
    api_key: str
    has_api_key: bool
    api_key_hint: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., provider_name: _Optional[str] = ..., provider_type: _Optional[_Union[ProviderType, str]] = ..., base_url: _Optional[str] = ..., api_key: _Optional[str] = ..., has_api_key: _Optional[bool] = ..., api_key_hint: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...
