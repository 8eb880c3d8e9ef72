from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ToolRule(_message.Message):
    __slots__ = ("init", "terminal", "continue_loop", "child", "parent", "conditional", "max_count_per_step", "required_before_exit", "requires_approval")
    INIT_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    CONTINUE_LOOP_FIELD_NUMBER: _ClassVar[int]
    CHILD_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    CONDITIONAL_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_BEFORE_EXIT_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    init: InitToolRule
    terminal: TerminalToolRule
    continue_loop: ContinueToolRule
    child: ChildToolRule
    parent: ParentToolRule
    conditional: ConditionalToolRule
    max_count_per_step: MaxCountPerStepToolRule
    required_before_exit: RequiredBeforeExitToolRule
    requires_approval: RequiresApprovalToolRule
    def __init__(self, init: _Optional[_Union[InitToolRule, _Mapping]] = ..., terminal: _Optional[_Union[TerminalToolRule, _Mapping]] = ..., continue_loop: _Optional[_Union[ContinueToolRule, _Mapping]] = ..., child: _Optional[_Union[ChildToolRule, _Mapping]] = ..., parent: _Optional[_Union[ParentToolRule, _Mapping]] = ..., conditional: _Optional[_Union[ConditionalToolRule, _Mapping]] = ..., max_count_per_step: _Optional[_Union[MaxCountPerStepToolRule, _Mapping]] = ..., required_before_exit: _Optional[_Union[RequiredBeforeExitToolRule, _Mapping]] = ..., requires_approval: _Optional[_Union[RequiresApprovalToolRule, _Mapping]] = ...) -> None: ...

class InitToolRule(_message.Message):
    __slots__ = ("tool_name", "prefilled_args")
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    PREFILLED_ARGS_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    prefilled_args: _struct_pb2.Struct
    def __init__(self, tool_name: _Optional[str] = ..., prefilled_args: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TerminalToolRule(_message.Message):
    __slots__ = ("tool_name",)
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    def __init__(self, tool_name: _Optional[str] = ...) -> None: ...

class ContinueToolRule(_message.Message):
    __slots__ = ("tool_name",)
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    def __init__(self, tool_name: _Optional[str] = ...) -> None: ...

class ChildToolRule(_message.Message):
    __slots__ = ("tool_name", "children", "child_args")
    class ChildArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _struct_pb2.Struct
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    CHILD_ARGS_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    children: _containers.RepeatedScalarFieldContainer[str]
    child_args: _containers.MessageMap[str, _struct_pb2.Struct]
    def __init__(self, tool_name: _Optional[str] = ..., children: _Optional[_Iterable[str]] = ..., child_args: _Optional[_Mapping[str, _struct_pb2.Struct]] = ...) -> None: ...

class ParentToolRule(_message.Message):
    __slots__ = ("tool_name", "children")
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    children: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tool_name: _Optional[str] = ..., children: _Optional[_Iterable[str]] = ...) -> None: ...

class ConditionalToolRule(_message.Message):
    __slots__ = ("tool_name", "child_output_mapping", "default_child", "require_output_mapping")
    class ChildOutputMappingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    CHILD_OUTPUT_MAPPING_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CHILD_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_OUTPUT_MAPPING_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    child_output_mapping: _containers.ScalarMap[str, str]
    default_child: str
    require_output_mapping: bool
    def __init__(self, tool_name: _Optional[str] = ..., child_output_mapping: _Optional[_Mapping[str, str]] = ..., default_child: _Optional[str] = ..., require_output_mapping: _Optional[bool] = ...) -> None: ...

class MaxCountPerStepToolRule(_message.Message):
    __slots__ = ("tool_name", "max_count_limit")
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_COUNT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    max_count_limit: int
    def __init__(self, tool_name: _Optional[str] = ..., max_count_limit: _Optional[int] = ...) -> None: ...

class RequiredBeforeExitToolRule(_message.Message):
    __slots__ = ("tool_name",)
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    def __init__(self, tool_name: _Optional[str] = ...) -> None: ...

class RequiresApprovalToolRule(_message.Message):
    __slots__ = ("tool_name",)
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    tool_name: str
    def __init__(self, tool_name: _Optional[str] = ...) -> None: ...
