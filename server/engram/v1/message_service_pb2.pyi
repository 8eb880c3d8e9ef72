import datetime

from engram.v1 import message_pb2 as _message_pb2
from engram.v1 import run_pb2 as _run_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.api import client_pb2 as _client_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.api import resource_pb2 as _resource_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SendMessageRequest(_message.Message):
    __slots__ = ("agent", "text", "max_steps", "request_id", "background")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_FIELD_NUMBER: _ClassVar[int]
    agent: str
    text: str
    max_steps: int
    request_id: str
    background: bool
    def __init__(self, agent: _Optional[str] = ..., text: _Optional[str] = ..., max_steps: _Optional[int] = ..., request_id: _Optional[str] = ..., background: _Optional[bool] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("run", "messages")
    RUN_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ...) -> None: ...

class StreamMessageRequest(_message.Message):
    __slots__ = ("agent", "text", "max_steps", "stream_tokens", "request_id")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    STREAM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    agent: str
    text: str
    max_steps: int
    stream_tokens: bool
    request_id: str
    def __init__(self, agent: _Optional[str] = ..., text: _Optional[str] = ..., max_steps: _Optional[int] = ..., stream_tokens: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitApprovalRequest(_message.Message):
    __slots__ = ("agent", "call_id", "approve", "reason", "stream_tokens", "max_steps", "request_id")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STREAM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    agent: str
    call_id: str
    approve: bool
    reason: str
    stream_tokens: bool
    max_steps: int
    request_id: str
    def __init__(self, agent: _Optional[str] = ..., call_id: _Optional[str] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ..., stream_tokens: _Optional[bool] = ..., max_steps: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class TurnEvent(_message.Message):
    __slots__ = ("run", "seq", "step", "message_id", "reasoning", "hidden_reasoning", "assistant_message", "tool_call", "tool_return", "approval_request", "stop_reason", "usage", "ping", "error", "tool_call_delta")
    RUN_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_REASONING_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    TOOL_RETURN_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_REQUEST_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_DELTA_FIELD_NUMBER: _ClassVar[int]
    run: str
    seq: int
    step: int
    message_id: str
    reasoning: ReasoningEvent
    hidden_reasoning: HiddenReasoningEvent
    assistant_message: AssistantMessageEvent
    tool_call: ToolCallEvent
    tool_return: ToolReturnEvent
    approval_request: ApprovalRequestEvent
    stop_reason: StopReasonEvent
    usage: UsageEvent
    ping: PingEvent
    error: ErrorEvent
    tool_call_delta: ToolCallDeltaEvent
    def __init__(self, run: _Optional[str] = ..., seq: _Optional[int] = ..., step: _Optional[int] = ..., message_id: _Optional[str] = ..., reasoning: _Optional[_Union[ReasoningEvent, _Mapping]] = ..., hidden_reasoning: _Optional[_Union[HiddenReasoningEvent, _Mapping]] = ..., assistant_message: _Optional[_Union[AssistantMessageEvent, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCallEvent, _Mapping]] = ..., tool_return: _Optional[_Union[ToolReturnEvent, _Mapping]] = ..., approval_request: _Optional[_Union[ApprovalRequestEvent, _Mapping]] = ..., stop_reason: _Optional[_Union[StopReasonEvent, _Mapping]] = ..., usage: _Optional[_Union[UsageEvent, _Mapping]] = ..., ping: _Optional[_Union[PingEvent, _Mapping]] = ..., error: _Optional[_Union[ErrorEvent, _Mapping]] = ..., tool_call_delta: _Optional[_Union[ToolCallDeltaEvent, _Mapping]] = ...) -> None: ...

class ReasoningEvent(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class HiddenReasoningEvent(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AssistantMessageEvent(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class ToolCallDeltaEvent(_message.Message):
    __slots__ = ("index", "call_id", "name", "arguments_delta")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_DELTA_FIELD_NUMBER: _ClassVar[int]
    index: int
    call_id: str
    name: str
    arguments_delta: str
    def __init__(self, index: _Optional[int] = ..., call_id: _Optional[str] = ..., name: _Optional[str] = ..., arguments_delta: _Optional[str] = ...) -> None: ...

class ToolCallEvent(_message.Message):
    __slots__ = ("call_id", "name", "arguments")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    name: str
    arguments: str
    def __init__(self, call_id: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...

class ToolReturnEvent(_message.Message):
    __slots__ = ("call_id", "name", "text", "ok")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    name: str
    text: str
    ok: bool
    def __init__(self, call_id: _Optional[str] = ..., name: _Optional[str] = ..., text: _Optional[str] = ..., ok: _Optional[bool] = ...) -> None: ...

class ApprovalRequestEvent(_message.Message):
    __slots__ = ("call_id", "name", "arguments")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    name: str
    arguments: str
    def __init__(self, call_id: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[str] = ...) -> None: ...

class StopReasonEvent(_message.Message):
    __slots__ = ("stop_reason",)
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    stop_reason: _run_pb2.StopReason
    def __init__(self, stop_reason: _Optional[_Union[_run_pb2.StopReason, str]] = ...) -> None: ...

class UsageEvent(_message.Message):
    __slots__ = ("usage",)
    USAGE_FIELD_NUMBER: _ClassVar[int]
    usage: _run_pb2.Usage
    def __init__(self, usage: _Optional[_Union[_run_pb2.Usage, _Mapping]] = ...) -> None: ...

class PingEvent(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ErrorEvent(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _status_pb2.Status
    def __init__(self, status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ListMessagesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "newest_first", "roles", "start_time", "end_time")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    newest_first: bool
    roles: _containers.RepeatedScalarFieldContainer[_message_pb2.MessageRole]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., newest_first: _Optional[bool] = ..., roles: _Optional[_Iterable[_Union[_message_pb2.MessageRole, str]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListMessagesResponse(_message.Message):
    __slots__ = ("messages", "next_page_token")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    next_page_token: str
    def __init__(self, messages: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SearchMessagesRequest(_message.Message):
    __slots__ = ("parent", "query", "roles", "start_time", "end_time", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    query: str
    roles: _containers.RepeatedScalarFieldContainer[_message_pb2.MessageRole]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., query: _Optional[str] = ..., roles: _Optional[_Iterable[_Union[_message_pb2.MessageRole, str]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchMessagesResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[MessageSearchResult]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[MessageSearchResult, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class MessageSearchResult(_message.Message):
    __slots__ = ("message", "relevance")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    message: _message_pb2.Message
    relevance: float
    def __init__(self, message: _Optional[_Union[_message_pb2.Message, _Mapping]] = ..., relevance: _Optional[float] = ...) -> None: ...

class ResetMessagesRequest(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: str
    def __init__(self, agent: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("agent", "page_size", "page_token", "statuses", "start_time", "end_time")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    agent: str
    page_size: int
    page_token: str
    statuses: _containers.RepeatedScalarFieldContainer[_run_pb2.RunStatus]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, agent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[_run_pb2.RunStatus, str]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamRunRequest(_message.Message):
    __slots__ = ("name", "after_seq")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    name: str
    after_seq: int
    def __init__(self, name: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CancelTurnRequest(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: str
    def __init__(self, agent: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListRunStepsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunStepsResponse(_message.Message):
    __slots__ = ("steps", "next_page_token")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[_run_pb2.Step]
    next_page_token: str
    def __init__(self, steps: _Optional[_Iterable[_Union[_run_pb2.Step, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetContextWindowRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ContextWindow(_message.Message):
    __slots__ = ("name", "limit", "total_tokens", "system_prompt_tokens", "core_memory_tokens", "tool_rules_tokens", "memory_statistics_tokens", "summary_tokens", "messages_tokens", "tool_definitions_tokens", "message_count", "system_message", "files_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CORE_MEMORY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOOL_RULES_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_STATISTICS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOOL_DEFINITIONS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FILES_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    limit: int
    total_tokens: int
    system_prompt_tokens: int
    core_memory_tokens: int
    tool_rules_tokens: int
    memory_statistics_tokens: int
    summary_tokens: int
    messages_tokens: int
    tool_definitions_tokens: int
    message_count: int
    system_message: str
    files_tokens: int
    def __init__(self, name: _Optional[str] = ..., limit: _Optional[int] = ..., total_tokens: _Optional[int] = ..., system_prompt_tokens: _Optional[int] = ..., core_memory_tokens: _Optional[int] = ..., tool_rules_tokens: _Optional[int] = ..., memory_statistics_tokens: _Optional[int] = ..., summary_tokens: _Optional[int] = ..., messages_tokens: _Optional[int] = ..., tool_definitions_tokens: _Optional[int] = ..., message_count: _Optional[int] = ..., system_message: _Optional[str] = ..., files_tokens: _Optional[int] = ...) -> None: ...
