"""One agent turn: call the model, run its tools, obey its rules, until the turn ends.

This is the loop at the heart of the runtime, kept free of storage and of
gRPC: it takes the conversation so far, a provider, the agent's tools and its
core memory, and yields what happens as it happens.  The caller persists the
new messages and the changed memory blocks, and turns the events into the
stream a client sees.

Two loop contracts exist, chosen by the agent's type:

* **native**: the model may answer in plain text; a tool call continues the
  loop, and an answer without a tool call ends the turn;
* **heartbeat**: the model talks to the user only through ``send_message``,
  and the loop continues only when a tool call asks for it with
  ``request_heartbeat``; plain text without a tool call is an error the model
  is told about (it does not reach the user).

Tool rules apply to both (see :mod:`tool_rule_solver`).

The loop does not manage the context window itself, since making room means
storing a summary; whoever owns the conversation may pass two hooks on the
:class:`Turn`: ``before_step`` runs before every model call (to compact when
the context nears the window), and ``on_context_overflow`` runs when the
provider refuses a call as too long, after which the call is retried, at
most :data:`MAX_OVERFLOW_RETRIES` times per step.  Without them the loop
behaves as if they did nothing.

A turn that stopped for approval is picked up by a new turn whose
:class:`Turn` carries a :class:`PendingDecision` in ``resume``: before its
first model call the loop runs the approved call (or answers a denied one
with a refusal the model can read), and then goes on as after any tool call.
The tool rules are applied to that call as to the first call of the new turn,
since rule state (init, max-count, ...) is kept per turn.

Every message the turn writes gets its id from ``Turn.new_message_id`` when
it is created, and the events that show a message carry that id.  The
assistant message's id is chosen before its model call starts, so that with
token streaming every piece of it (reasoning, text, tool-call arguments)
already names the message it will be stored as.  Pieces are merged by a
:class:`DeltaCoalescer` (see :mod:`delta_coalescer`), flushed before any
other event and at the end of each model call.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Self

from engram.adapters.llm.chat import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    Completed,
    FinishReason,
    HiddenReasoningStarted,
    ReasoningDelta,
    Role,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
)
from engram.adapters.llm.errors import ContextWindowExceededError
from engram.adapters.llm.registry import LLMProvider
from engram.services.runtime.core_memory import (
    MEMORY_TOOL_NAMES,
    CoreMemory,
    MemoryToolError,
    run_memory_tool,
)
from engram.services.runtime.delta_coalescer import DeltaCoalescer
from engram.services.runtime.tool_rule_solver import (
    Continuation,
    ToolRuleSolver,
    violation_message,
)

SEND_MESSAGE = "send_message"
HEARTBEAT_ARGUMENT = "request_heartbeat"
DEFAULT_MAX_STEPS = 50
# How many times one step's model call is retried after the context overflowed
# and the overflow hook made room; the next overflow fails the turn.
MAX_OVERFLOW_RETRIES = 3

# What the model is told, in our own words.
NO_TOOL_CALL_NOTICE = (
    "Your last reply was plain text, which the user does not see. Speak to the user with "
    "send_message, or call another tool."
)
HEARTBEAT_NOTICE = "You asked to continue after your tool call; go on."
RULE_CONTINUE_NOTICE = "A tool rule requires you to continue; go on."
DENIED_NOTICE = "The user refused your tool call, so it did not run; take that into account."


class LoopContract(enum.StrEnum):
    NATIVE = "native"
    HEARTBEAT = "heartbeat"


class StopReason(enum.StrEnum):
    END_TURN = "end_turn"
    MAX_STEPS = "max_steps"
    TOOL_RULE = "tool_rule"
    REQUIRES_APPROVAL = "requires_approval"
    MAX_TOKENS_EXCEEDED = "max_tokens_exceeded"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class RuntimeTool:
    """A tool as the loop offers it: its schema and how long its output may be."""

    spec: ToolSpec
    return_char_limit: int = 50_000


@dataclass(frozen=True)
class ToolOutcome:
    text: str
    ok: bool = True


# Runs a tool the loop does not run itself (custom tools, search): (name, arguments) -> outcome.
ToolRunner = Callable[[str, Mapping[str, Any]], Awaitable[ToolOutcome]]
# Runs before each model call; may rewrite ``turn.history`` (compaction).
StepHook = Callable[["Turn"], Awaitable[None]]
# Runs when the provider refused a call as too long; True when it made room to retry.
OverflowHook = Callable[["Turn"], Awaitable[bool]]


@dataclass(frozen=True)
class TurnSettings:
    model: str
    contract: LoopContract
    max_steps: int = DEFAULT_MAX_STEPS
    temperature: float | None = None
    max_output_tokens: int | None = None
    reasoning_effort: str = ""
    parallel_tool_calls: bool = False
    stream_tokens: bool = False
    # How long token-stream pieces are held to be merged (seconds); 0 sends each as it comes.
    coalesce_seconds: float = 0.0
    # The caller's deadline (time.monotonic() seconds), passed down to each
    # provider call so that a call never outlives the client waiting for it.
    deadline: float | None = None


# --- events --------------------------------------------------------------------------


@dataclass(frozen=True)
class StepStarted:
    step: int


@dataclass(frozen=True)
class ReasoningEvent:
    """The model's reasoning, whole, or (``delta``) the next piece of it."""

    text: str
    delta: bool = False  # a piece of the text (token streaming), not the whole
    message_id: str = ""  # the assistant message it belongs to

    @property
    def channel(self) -> tuple[str, str]:
        return ("reasoning", self.message_id)

    @property
    def size(self) -> int:
        return len(self.text)

    def followed_by(self, later: Self) -> Self:
        return replace(self, text=self.text + later.text)


@dataclass(frozen=True)
class AssistantEvent:
    """Text for the user, whole, or (``delta``) the next piece of it."""

    text: str
    delta: bool = False
    message_id: str = ""  # the assistant message it belongs to (or whose send_message said it)

    @property
    def channel(self) -> tuple[str, str]:
        return ("text", self.message_id)

    @property
    def size(self) -> int:
        return len(self.text)

    def followed_by(self, later: Self) -> Self:
        return replace(self, text=self.text + later.text)


@dataclass(frozen=True)
class ToolCallDeltaEvent:
    """The next piece of a tool call's arguments, as the model writes them.

    ``index`` tells apart the calls of one answer; ``call_id`` is on every
    piece, ``name`` only on the first piece of a call.
    """

    index: int
    call_id: str
    name: str
    arguments: str
    message_id: str

    @property
    def channel(self) -> tuple[str, str, int]:
        return ("tool_call", self.message_id, self.index)

    @property
    def size(self) -> int:
        return len(self.arguments)

    def followed_by(self, later: Self) -> Self:
        return replace(
            self,
            call_id=self.call_id or later.call_id,
            name=self.name or later.name,
            arguments=self.arguments + later.arguments,
        )


DeltaEvent = ReasoningEvent | AssistantEvent | ToolCallDeltaEvent


@dataclass(frozen=True)
class HiddenReasoningEvent:
    """The model reasoned, but the provider keeps the reasoning encrypted."""

    message_id: str


@dataclass(frozen=True)
class ToolCallEvent:
    call: ToolCall
    message_id: str = ""  # the assistant message that made the call


@dataclass(frozen=True)
class ToolReturnEvent:
    call_id: str
    name: str
    text: str
    ok: bool
    message_id: str = ""  # the tool message that carries the result


@dataclass(frozen=True)
class ApprovalRequestEvent:
    call: ToolCall
    message_id: str = ""  # the assistant message that made the call


@dataclass(frozen=True)
class StepFinished:
    step: int
    result: ChatResult


@dataclass(frozen=True)
class TurnFinished:
    stop_reason: StopReason
    steps: int
    prompt_tokens: int
    completion_tokens: int


# What a client sees of a step (the rest of TurnEvent is the loop's bookkeeping);
# a union, so that ``isinstance(event, StepEvent)`` tells them apart.
StepEvent = (
    ReasoningEvent
    | AssistantEvent
    | ToolCallDeltaEvent
    | HiddenReasoningEvent
    | ToolCallEvent
    | ToolReturnEvent
    | ApprovalRequestEvent
)
TurnEvent = StepStarted | StepEvent | StepFinished | TurnFinished


@dataclass(frozen=True)
class PendingDecision:
    """The user's answer to the call a previous turn stopped on for approval.

    Carried by the turn that resumes the conversation instead of a new user
    message, so the model sees the call answered before it is asked again.
    """

    call: ToolCall
    approve: bool
    reason: str = ""
    message_id: str = ""  # the stored assistant message that made the call


@dataclass
class Turn:
    """The state of one turn; ``new_messages`` is what the caller must persist."""

    settings: TurnSettings
    provider: LLMProvider
    tools: Sequence[RuntimeTool]
    memory: CoreMemory
    solver: ToolRuleSolver
    run_tool: ToolRunner
    history: list[ChatMessage]
    cancelled: Callable[[], bool] = lambda: False
    new_messages: list[ChatMessage] = field(default_factory=list)
    # Context-window management (see the module's docstring); None leaves the history as is.
    before_step: StepHook | None = None
    on_context_overflow: OverflowHook | None = None
    # Set when the turn starts by answering a call that waited for approval.
    resume: PendingDecision | None = None
    # Chooses the id of each message the turn writes (the caller's id scheme).
    new_message_id: Callable[[], str] = lambda: str(uuid.uuid4())

    def append(self, message: ChatMessage) -> None:
        """Add a message to the conversation; it gets an id here unless it has one."""
        if not message.id:
            message = replace(message, id=self.new_message_id())
        self.history.append(message)
        self.new_messages.append(message)


def with_heartbeat_argument(spec: ToolSpec) -> ToolSpec:
    """The schema with a required ``request_heartbeat`` flag (heartbeat contract)."""
    parameters = dict(spec.parameters)
    properties = dict(parameters.get("properties", {}))
    properties[HEARTBEAT_ARGUMENT] = {
        "type": "boolean",
        "description": "True to keep working after this tool returns; false to end your turn.",
    }
    required = [*parameters.get("required", []), HEARTBEAT_ARGUMENT]
    return replace(spec, parameters={**parameters, "properties": properties, "required": required})


def package_return(outcome: ToolOutcome, limit: int) -> str:
    """The tool result as the model reads it, cut to the tool's return limit."""
    text = outcome.text
    if len(text) > limit:
        text = text[:limit] + f"... [cut to {limit} characters]"
    return json.dumps({"status": "ok" if outcome.ok else "error", "result": text})


async def run_turn(turn: Turn) -> AsyncIterator[TurnEvent]:
    """Run steps until the turn ends; the last event is :class:`TurnFinished`."""
    turn.solver.reset()
    prompt_tokens = completion_tokens = 0
    step = 0
    stop: StopReason | None = None
    if turn.resume is not None:
        opening: list[TurnEvent] = []
        stop = await _resolve_pending(turn, turn.resume, opening)
        for answered in opening:
            yield answered
    while stop is None:
        if turn.cancelled():
            stop = StopReason.CANCELLED
            break
        step += 1
        yield StepStarted(step)
        # After StepStarted, which is when a caller that persists (MessageService)
        # stores the previous step: a hook that rewrites the history then works
        # on messages that are all stored.
        if turn.before_step is not None:
            await turn.before_step(turn)
        # Chosen now, so that streamed pieces of the answer name their message.
        message_id = turn.new_message_id()
        result: ChatResult | None = None
        async for event in _call_model_making_room(turn, message_id):
            if isinstance(event, ChatResult):
                result = event
            else:
                yield event
        assert result is not None
        prompt_tokens += result.usage.prompt_tokens
        completion_tokens += result.usage.completion_tokens
        yield StepFinished(step, result)
        outcome: list[TurnEvent] = []
        stop = await _after_step(turn, result, step, message_id, outcome)
        for event in outcome:
            yield event
    yield TurnFinished(stop, step, prompt_tokens, completion_tokens)


def _offered_tools(turn: Turn) -> tuple[list[ToolSpec], ToolChoice]:
    names = [tool.spec.name for tool in turn.tools]
    allowed = turn.solver.allowed_tools(names)
    terminal = turn.solver.terminal_tools()
    specs = []
    for tool in turn.tools:
        if tool.spec.name not in allowed.names:
            continue
        spec = tool.spec
        if turn.settings.contract is LoopContract.HEARTBEAT and spec.name not in terminal:
            spec = with_heartbeat_argument(spec)
        specs.append(spec)
    # A native agent may always answer in plain text, so a tool is forced on it
    # only when its rules narrowed the choice to one; a heartbeat agent must
    # call a tool anyway, so its only tool is forced too (as in the reference).
    narrowed = len(allowed.names) < len(names)
    if allowed.forced and (narrowed or turn.settings.contract is LoopContract.HEARTBEAT):
        return specs, ToolChoice("tool", allowed.forced)
    if turn.settings.contract is LoopContract.HEARTBEAT and specs:
        return specs, ToolChoice("required")
    return specs, ToolChoice("auto")


async def _call_model_making_room(
    turn: Turn, message_id: str
) -> AsyncIterator[TurnEvent | ChatResult]:
    """The model call, retried after the overflow hook made room in the context.

    A provider reports an overflow before it sends anything; an overflow
    after events were passed on is not retried, which would repeat them.
    """
    retries = 0
    while True:
        sent_any = False
        try:
            async for event in _call_model(turn, message_id):
                sent_any = True
                yield event
            return
        except ContextWindowExceededError:
            hook = turn.on_context_overflow
            if sent_any or hook is None or retries >= MAX_OVERFLOW_RETRIES:
                raise
            if not await hook(turn):
                raise
            retries += 1


# Leave the last moments of the caller's deadline for storing the step and answering.
DEADLINE_MARGIN_SECONDS = 0.25
MIN_CALL_SECONDS = 0.05


def time_left_for_call(deadline: float | None) -> float | None:
    """Seconds a provider call may take under ``deadline`` (None: no deadline)."""
    if deadline is None:
        return None
    return max(MIN_CALL_SECONDS, deadline - time.monotonic() - DEADLINE_MARGIN_SECONDS)


async def _call_model(turn: Turn, message_id: str) -> AsyncIterator[TurnEvent | ChatResult]:
    specs, choice = _offered_tools(turn)
    settings = turn.settings
    request = ChatRequest(
        timeout=time_left_for_call(settings.deadline),
        model=settings.model,
        messages=list(turn.history),
        tools=specs,
        tool_choice=choice if specs else ToolChoice("auto"),
        # Tool rules reason about one call at a time, so they rule out parallel calls.
        parallel_tool_calls=(settings.parallel_tool_calls and not turn.solver.rules)
        if specs
        else None,
        temperature=settings.temperature,
        max_output_tokens=settings.max_output_tokens,
        reasoning_effort=settings.reasoning_effort,
    )
    if not settings.stream_tokens:
        yield await turn.provider.complete(request)
        return
    pieces = _StreamPieces(message_id, settings.contract)
    coalescer = DeltaCoalescer[DeltaEvent](settings.coalesce_seconds)
    hidden_shown = False
    async for event in turn.provider.stream(request):
        if isinstance(event, Completed):
            for held in coalescer.flush():
                yield held
            yield event.result
        elif isinstance(event, HiddenReasoningStarted):
            if not hidden_shown:
                hidden_shown = True
                for held in coalescer.flush():
                    yield held
                yield HiddenReasoningEvent(message_id)
        else:
            piece = pieces.translate(event)
            if piece is not None:
                for ready in coalescer.add(piece):
                    yield ready


class _StreamPieces:
    """Turns a provider's stream pieces into the pieces a client sees.

    Every piece names the answer's message; a tool call's id is repeated on
    each of its pieces, and its name is given once, on the first.
    """

    def __init__(self, message_id: str, contract: LoopContract) -> None:
        self.message_id = message_id
        self.contract = contract
        self.call_ids: dict[int, str] = {}
        self.named: set[int] = set()

    def translate(self, event: StreamEvent) -> DeltaEvent | None:
        if isinstance(event, ReasoningDelta):
            return ReasoningEvent(event.text, delta=True, message_id=self.message_id)
        if isinstance(event, TextDelta):
            # A heartbeat agent's plain text is not for the user.
            if self.contract is not LoopContract.NATIVE:
                return None
            return AssistantEvent(event.text, delta=True, message_id=self.message_id)
        if isinstance(event, ToolCallDelta):
            return self._tool_piece(event)
        return None

    def _tool_piece(self, event: ToolCallDelta) -> ToolCallDeltaEvent | None:
        call_id = self.call_ids.get(event.index, "") or event.id
        self.call_ids[event.index] = call_id
        name = ""
        if event.name and event.index not in self.named:
            self.named.add(event.index)
            name = event.name
        if not name and not event.arguments:
            return None  # nothing new (a provider repeating a call's header)
        return ToolCallDeltaEvent(event.index, call_id, name, event.arguments, self.message_id)


async def _after_step(
    turn: Turn, result: ChatResult, step: int, message_id: str, events: list[TurnEvent]
) -> StopReason | None:
    """Record the model's answer, run its tools, and say whether the turn stops."""
    last_step = step >= turn.settings.max_steps
    if not turn.settings.stream_tokens:
        _whole_reasoning(result, message_id, events)
    turn.append(
        ChatMessage(
            Role.ASSISTANT,
            result.content,
            tool_calls=tuple(result.tool_calls),
            reasoning=result.reasoning,
            id=message_id,
        )
    )
    if not result.tool_calls:
        return _after_text(turn, result, last_step, message_id, events)
    decision: Continuation | None = None
    calls = list(result.tool_calls)
    for index, call in enumerate(calls):
        events.append(ToolCallEvent(call, message_id))
        if turn.solver.requires_approval(call.name):
            events.append(ApprovalRequestEvent(call, message_id))
            # The approved (or denied) call gets its result later; calls after it in
            # the same answer are closed now, so the history stays well formed.
            for skipped in calls[index + 1 :]:
                _close_unrun(turn, skipped, call.name, events)
            return StopReason.REQUIRES_APPROVAL
        decision = await _run_call(turn, call, last_step, events, message_id)
    assert decision is not None
    return _follow(turn, decision)


def _whole_reasoning(result: ChatResult, message_id: str, events: list[TurnEvent]) -> None:
    """The answer's reasoning as whole events (step streaming): hidden first, then visible."""
    reasoning = result.reasoning
    if reasoning is None:
        return
    if reasoning.redacted:
        events.append(HiddenReasoningEvent(message_id))
    if reasoning.text:
        events.append(ReasoningEvent(reasoning.text, message_id=message_id))


def _follow(turn: Turn, decision: Continuation) -> StopReason | None:
    """Act on the decision taken after a tool call: the stop reason, or None to go on.

    A heartbeat model is told why it gets another step; a native one reads the
    tool result itself.
    """
    if decision.continue_:
        if turn.settings.contract is LoopContract.HEARTBEAT:
            notice = decision.reason or HEARTBEAT_NOTICE
            turn.append(ChatMessage(Role.USER, notice))
        return None
    return StopReason(decision.stop_reason or StopReason.END_TURN)


async def _resolve_pending(
    turn: Turn, decision: PendingDecision, events: list[TurnEvent]
) -> StopReason | None:
    """Answer the call the previous turn stopped on, before the first model call.

    An approved call runs like any call (rules checked and recorded, the
    usual continuation); a denied one always continues, so the model can
    answer the refusal rather than leave the user without a reply.
    """
    if decision.approve:
        ran = await _run_call(turn, decision.call, False, events, decision.message_id)
        return _follow(turn, ran)
    _deny(turn, decision, events)
    return _follow(turn, Continuation(True, reason=DENIED_NOTICE))


def _deny(turn: Turn, decision: PendingDecision, events: list[TurnEvent]) -> None:
    """Give the denied call a result that says it did not run, and why if the user said."""
    call = decision.call
    text = "Not run: the user denied this call."
    if decision.reason.strip():
        text += f" Their reason: {decision.reason.strip()}"
    _answer_unrun(turn, call, text, events)


def _after_text(
    turn: Turn, result: ChatResult, last_step: bool, message_id: str, events: list[TurnEvent]
) -> StopReason | None:
    if turn.settings.contract is LoopContract.NATIVE:
        if result.content and not turn.settings.stream_tokens:
            events.append(AssistantEvent(result.content, message_id=message_id))
        if result.finish_reason is FinishReason.LENGTH:
            return StopReason.MAX_TOKENS_EXCEEDED
        decision = turn.solver.decide_native_continuation(None, last_step)
        if decision.continue_:
            turn.append(ChatMessage(Role.USER, decision.reason or RULE_CONTINUE_NOTICE))
            return None
        return StopReason(decision.stop_reason or StopReason.END_TURN)
    # Heartbeat contract: text is not a way to talk to the user.
    if last_step:
        return StopReason.MAX_STEPS
    turn.append(ChatMessage(Role.USER, NO_TOOL_CALL_NOTICE))
    return None


def _close_unrun(turn: Turn, call: ToolCall, waiting_for: str, events: list[TurnEvent]) -> None:
    _answer_unrun(turn, call, f"Not run: the turn paused for approval of {waiting_for}.", events)


def _answer_unrun(turn: Turn, call: ToolCall, text: str, events: list[TurnEvent]) -> None:
    """A failed result for a call that did not run, so no call is left without one."""
    message_id = turn.new_message_id()
    events.append(ToolReturnEvent(call.id, call.name, text, ok=False, message_id=message_id))
    turn.append(
        ChatMessage(
            Role.TOOL,
            package_return(ToolOutcome(text, ok=False), 50_000),
            tool_call_id=call.id,
            name=call.name,
            id=message_id,
        )
    )


async def _run_call(
    turn: Turn, call: ToolCall, last_step: bool, events: list[TurnEvent], caller_id: str = ""
) -> Continuation:
    """Run one call and record its result; ``caller_id`` is the message that made the call."""
    names = [tool.spec.name for tool in turn.tools]
    allowed = turn.solver.allowed_tools(names)
    heartbeat = False
    violated = call.name not in allowed.names
    if violated:
        outcome = ToolOutcome(violation_message(call.name, list(allowed.names)), ok=False)
    else:
        try:
            arguments = call.parsed_arguments()
        except ValueError:
            arguments = None
        if arguments is None:
            outcome = ToolOutcome("The arguments are not a valid JSON object.", ok=False)
        else:
            heartbeat = bool(arguments.pop(HEARTBEAT_ARGUMENT, False))
            outcome = await _execute(turn, call.name, arguments, events, caller_id)
            turn.solver.record_call(call.name, outcome.text)
    limit = next((t.return_char_limit for t in turn.tools if t.spec.name == call.name), 50_000)
    message_id = turn.new_message_id()
    events.append(ToolReturnEvent(call.id, call.name, outcome.text, outcome.ok, message_id))
    turn.append(
        ChatMessage(
            Role.TOOL,
            package_return(outcome, limit),
            tool_call_id=call.id,
            name=call.name,
            id=message_id,
        )
    )
    available = [tool.spec.name for tool in turn.tools]
    if turn.settings.contract is LoopContract.NATIVE:
        return turn.solver.decide_native_continuation(
            call.name, last_step, rule_violated=violated, available=available
        )
    return turn.solver.decide_continuation(
        call.name, heartbeat, last_step, rule_violated=violated, available=available
    )


async def _execute(
    turn: Turn, name: str, arguments: dict[str, Any], events: list[TurnEvent], caller_id: str
) -> ToolOutcome:
    if name == SEND_MESSAGE:
        message = arguments.get("message")
        if not isinstance(message, str):
            return ToolOutcome("The argument 'message' must be a string.", ok=False)
        events.append(AssistantEvent(message, message_id=caller_id))
        return ToolOutcome("The user has your message.")
    if name in MEMORY_TOOL_NAMES:
        try:
            return ToolOutcome(run_memory_tool(turn.memory, name, arguments))
        except MemoryToolError as error:
            return ToolOutcome(error.message, ok=False)
    return await turn.run_tool(name, arguments)
