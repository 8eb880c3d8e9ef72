import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FileView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_VIEW_UNSPECIFIED: _ClassVar[FileView]
    FILE_VIEW_BASIC: _ClassVar[FileView]
    FILE_VIEW_FULL: _ClassVar[FileView]
FILE_VIEW_UNSPECIFIED: FileView
FILE_VIEW_BASIC: FileView
FILE_VIEW_FULL: FileView

class Source(_message.Message):
    __slots__ = ("name", "id", "display_name", "description", "embedding", "agents", "file_count", "create_time", "update_time", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    display_name: str
    description: str
    embedding: str
    agents: _containers.RepeatedScalarFieldContainer[str]
    file_count: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., embedding: _Optional[str] = ..., agents: _Optional[_Iterable[str]] = ..., file_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class File(_message.Message):
    __slots__ = ("name", "id", "source", "file_name", "media_type", "size_bytes", "state", "error", "chunks_total", "chunks_done", "page_count", "text", "create_time", "update_time", "end_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[File.State]
        STATE_QUEUED: _ClassVar[File.State]
        STATE_PARSING: _ClassVar[File.State]
        STATE_EMBEDDING: _ClassVar[File.State]
        STATE_COMPLETED: _ClassVar[File.State]
        STATE_FAILED: _ClassVar[File.State]
    STATE_UNSPECIFIED: File.State
    STATE_QUEUED: File.State
    STATE_PARSING: File.State
    STATE_EMBEDDING: File.State
    STATE_COMPLETED: File.State
    STATE_FAILED: File.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_DONE_FIELD_NUMBER: _ClassVar[int]
    PAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    source: str
    file_name: str
    media_type: str
    size_bytes: int
    state: File.State
    error: str
    chunks_total: int
    chunks_done: int
    page_count: int
    text: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., source: _Optional[str] = ..., file_name: _Optional[str] = ..., media_type: _Optional[str] = ..., size_bytes: _Optional[int] = ..., state: _Optional[_Union[File.State, str]] = ..., error: _Optional[str] = ..., chunks_total: _Optional[int] = ..., chunks_done: _Optional[int] = ..., page_count: _Optional[int] = ..., text: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
