import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ToolType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_TYPE_UNSPECIFIED: _ClassVar[ToolType]
    TOOL_TYPE_CUSTOM: _ClassVar[ToolType]
    TOOL_TYPE_MEMORY: _ClassVar[ToolType]
    TOOL_TYPE_CORE: _ClassVar[ToolType]

class SourceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_TYPE_UNSPECIFIED: _ClassVar[SourceType]
    SOURCE_TYPE_PYTHON: _ClassVar[SourceType]
TOOL_TYPE_UNSPECIFIED: ToolType
TOOL_TYPE_CUSTOM: ToolType
TOOL_TYPE_MEMORY: ToolType
TOOL_TYPE_CORE: ToolType
SOURCE_TYPE_UNSPECIFIED: SourceType
SOURCE_TYPE_PYTHON: SourceType

class Tool(_message.Message):
    __slots__ = ("name", "id", "tool_name", "description", "tool_type", "source_type", "source_code", "json_schema", "tags", "return_char_limit", "pip_requirements", "default_requires_approval", "metadata", "create_time", "update_time", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TOOL_TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_CODE_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    RETURN_CHAR_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PIP_REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_REQUIRES_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    tool_name: str
    description: str
    tool_type: ToolType
    source_type: SourceType
    source_code: str
    json_schema: _struct_pb2.Struct
    tags: _containers.RepeatedScalarFieldContainer[str]
    return_char_limit: int
    pip_requirements: _containers.RepeatedCompositeFieldContainer[PipRequirement]
    default_requires_approval: bool
    metadata: _struct_pb2.Struct
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., tool_name: _Optional[str] = ..., description: _Optional[str] = ..., tool_type: _Optional[_Union[ToolType, str]] = ..., source_type: _Optional[_Union[SourceType, str]] = ..., source_code: _Optional[str] = ..., json_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., return_char_limit: _Optional[int] = ..., pip_requirements: _Optional[_Iterable[_Union[PipRequirement, _Mapping]]] = ..., default_requires_approval: _Optional[bool] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class PipRequirement(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...
