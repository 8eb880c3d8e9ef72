import datetime

from engram.v1 import archive_pb2 as _archive_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import client_pb2 as _client_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import field_info_pb2 as _field_info_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateArchiveRequest(_message.Message):
    __slots__ = ("archive", "request_id")
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    archive: _archive_pb2.Archive
    request_id: str
    def __init__(self, archive: _Optional[_Union[_archive_pb2.Archive, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetArchiveRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListArchivesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "agent")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    agent: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., agent: _Optional[str] = ...) -> None: ...

class ListArchivesResponse(_message.Message):
    __slots__ = ("archives", "next_page_token")
    ARCHIVES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    archives: _containers.RepeatedCompositeFieldContainer[_archive_pb2.Archive]
    next_page_token: str
    def __init__(self, archives: _Optional[_Iterable[_Union[_archive_pb2.Archive, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateArchiveRequest(_message.Message):
    __slots__ = ("archive", "update_mask")
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    archive: _archive_pb2.Archive
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, archive: _Optional[_Union[_archive_pb2.Archive, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteArchiveRequest(_message.Message):
    __slots__ = ("name", "etag", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    etag: str
    force: bool
    def __init__(self, name: _Optional[str] = ..., etag: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class AttachArchiveRequest(_message.Message):
    __slots__ = ("archive", "agent")
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    archive: str
    agent: str
    def __init__(self, archive: _Optional[str] = ..., agent: _Optional[str] = ...) -> None: ...

class DetachArchiveRequest(_message.Message):
    __slots__ = ("archive", "agent")
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    archive: str
    agent: str
    def __init__(self, archive: _Optional[str] = ..., agent: _Optional[str] = ...) -> None: ...

class CreatePassageRequest(_message.Message):
    __slots__ = ("parent", "passage", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PASSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    passage: _archive_pb2.Passage
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., passage: _Optional[_Union[_archive_pb2.Passage, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class BatchCreatePassagesRequest(_message.Message):
    __slots__ = ("parent", "passages", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    passages: _containers.RepeatedCompositeFieldContainer[_archive_pb2.Passage]
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., passages: _Optional[_Iterable[_Union[_archive_pb2.Passage, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class BatchCreatePassagesResponse(_message.Message):
    __slots__ = ("passages",)
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    passages: _containers.RepeatedCompositeFieldContainer[_archive_pb2.Passage]
    def __init__(self, passages: _Optional[_Iterable[_Union[_archive_pb2.Passage, _Mapping]]] = ...) -> None: ...

class GetPassageRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListPassagesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "newest_first")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    newest_first: bool
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class ListPassagesResponse(_message.Message):
    __slots__ = ("passages", "next_page_token")
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    passages: _containers.RepeatedCompositeFieldContainer[_archive_pb2.Passage]
    next_page_token: str
    def __init__(self, passages: _Optional[_Iterable[_Union[_archive_pb2.Passage, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeletePassageRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SearchPassagesRequest(_message.Message):
    __slots__ = ("parent", "query", "top_k", "tags", "match_all_tags", "start_time", "end_time")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    MATCH_ALL_TAGS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    parent: str
    query: str
    top_k: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    match_all_tags: bool
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, parent: _Optional[str] = ..., query: _Optional[str] = ..., top_k: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ..., match_all_tags: _Optional[bool] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SearchPassagesResponse(_message.Message):
    __slots__ = ("results",)
    class Result(_message.Message):
        __slots__ = ("passage", "score")
        PASSAGE_FIELD_NUMBER: _ClassVar[int]
        SCORE_FIELD_NUMBER: _ClassVar[int]
        passage: _archive_pb2.Passage
        score: float
        def __init__(self, passage: _Optional[_Union[_archive_pb2.Passage, _Mapping]] = ..., score: _Optional[float] = ...) -> None: ...
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchPassagesResponse.Result]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchPassagesResponse.Result, _Mapping]]] = ...) -> None: ...
