import datetime

from engram.v1 import tool_rule_pb2 as _tool_rule_pb2
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

class AgentType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_TYPE_UNSPECIFIED: _ClassVar[AgentType]
    AGENT_TYPE_NATIVE: _ClassVar[AgentType]
    AGENT_TYPE_HEARTBEAT: _ClassVar[AgentType]
AGENT_TYPE_UNSPECIFIED: AgentType
AGENT_TYPE_NATIVE: AgentType
AGENT_TYPE_HEARTBEAT: AgentType

class Agent(_message.Message):
    __slots__ = ("name", "id", "display_name", "description", "system", "agent_type", "model", "model_settings", "embedding", "context_window_limit", "tags", "metadata", "tool_rules", "message_buffer_autoclear", "blocks", "tools", "create_time", "update_time", "etag")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    AGENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_LIMIT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TOOL_RULES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_BUFFER_AUTOCLEAR_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    display_name: str
    description: str
    system: str
    agent_type: AgentType
    model: str
    model_settings: ModelSettings
    embedding: str
    context_window_limit: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    metadata: _struct_pb2.Struct
    tool_rules: _containers.RepeatedCompositeFieldContainer[_tool_rule_pb2.ToolRule]
    message_buffer_autoclear: bool
    blocks: _containers.RepeatedScalarFieldContainer[str]
    tools: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    etag: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., system: _Optional[str] = ..., agent_type: _Optional[_Union[AgentType, str]] = ..., model: _Optional[str] = ..., model_settings: _Optional[_Union[ModelSettings, _Mapping]] = ..., embedding: _Optional[str] = ..., context_window_limit: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., tool_rules: _Optional[_Iterable[_Union[_tool_rule_pb2.ToolRule, _Mapping]]] = ..., message_buffer_autoclear: _Optional[bool] = ..., blocks: _Optional[_Iterable[str]] = ..., tools: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., etag: _Optional[str] = ...) -> None: ...

class ModelSettings(_message.Message):
    __slots__ = ("temperature", "max_output_tokens", "parallel_tool_calls", "reasoning_effort")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    REASONING_EFFORT_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    max_output_tokens: int
    parallel_tool_calls: bool
    reasoning_effort: str
    def __init__(self, temperature: _Optional[float] = ..., max_output_tokens: _Optional[int] = ..., parallel_tool_calls: _Optional[bool] = ..., reasoning_effort: _Optional[str] = ...) -> None: ...
