"""MessageService and RunService: turns, the conversation, runs and their steps."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2

from engram.api.agents import agent_id_of
from engram.api.convert import resource_id, timestamp
from engram.rpc.application import Application
from engram.rpc.context import current_caller, current_request_id
from engram.rpc.errors import map_error
from engram.services.errors import InvalidArgumentError
from engram.services.messages import MessageService, RunEvent, RunStarted, RunView
from engram.services.runtime.turn import (
    ApprovalRequestEvent,
    AssistantEvent,
    HiddenReasoningEvent,
    ReasoningEvent,
    StepStarted,
    ToolCallDeltaEvent,
    ToolCallEvent,
    ToolReturnEvent,
    TurnFinished,
)
from engram.store.ids import IdPrefix
from engram.store.models import Message, Step
from engram.v1 import message_pb2, message_service_pb2, message_service_pb2_grpc, run_pb2

DEFAULT_MAX_STEPS = 50
CONTEXT_WINDOW_SUFFIX = "/contextWindow"
MAX_STEPS_LIMIT = 1000

ROLE_TO_PROTO: dict[str, Any] = {
    "user": message_pb2.MESSAGE_ROLE_USER,
    "assistant": message_pb2.MESSAGE_ROLE_ASSISTANT,
    "tool": message_pb2.MESSAGE_ROLE_TOOL,
    "system": message_pb2.MESSAGE_ROLE_SYSTEM,
}
ROLE_FROM_PROTO = {value: key for key, value in ROLE_TO_PROTO.items()}
STATUS_TO_PROTO: dict[str, Any] = {
    "created": run_pb2.RUN_STATUS_CREATED,
    "running": run_pb2.RUN_STATUS_RUNNING,
    "completed": run_pb2.RUN_STATUS_COMPLETED,
    "failed": run_pb2.RUN_STATUS_FAILED,
    "cancelled": run_pb2.RUN_STATUS_CANCELLED,
}
STOP_REASON_TO_PROTO: dict[str, Any] = {
    "end_turn": run_pb2.STOP_REASON_END_TURN,
    "max_steps": run_pb2.STOP_REASON_MAX_STEPS,
    "tool_rule": run_pb2.STOP_REASON_TOOL_RULE,
    "requires_approval": run_pb2.STOP_REASON_REQUIRES_APPROVAL,
    "max_tokens_exceeded": run_pb2.STOP_REASON_MAX_TOKENS_EXCEEDED,
    "cancelled": run_pb2.STOP_REASON_CANCELLED,
    "llm_api_error": run_pb2.STOP_REASON_LLM_API_ERROR,
    "error": run_pb2.STOP_REASON_ERROR,
    "context_window_overflow_in_system_prompt": (
        run_pb2.STOP_REASON_CONTEXT_WINDOW_OVERFLOW_IN_SYSTEM_PROMPT
    ),
}


def _text_of(message: Message) -> str:
    return "".join(
        str(part.get("text", "")) for part in message.content or () if part.get("type") == "text"
    )


def _reasoning_of(message: Message) -> str:
    return "".join(
        str(part.get("text", ""))
        for part in message.content or ()
        if part.get("type") == "reasoning"
    )


def message_to_proto(message: Message) -> message_pb2.Message:
    return message_pb2.Message(
        name=f"agents/{message.agent_id}/messages/{message.id}",
        id=message.id,
        role=ROLE_TO_PROTO.get(message.role, message_pb2.MESSAGE_ROLE_UNSPECIFIED),
        text=_text_of(message),
        reasoning=_reasoning_of(message),
        tool_calls=[
            message_pb2.MessageToolCall(
                id=str(call.get("id", "")),
                name=str(call.get("name", "")),
                arguments=str(call.get("arguments", "")),
            )
            for call in message.tool_calls or ()
        ],
        tool_call_id=message.tool_call_id or "",
        tool_name=message.name or "",
        run=f"runs/{message.run_id}" if message.run_id else "",
        sequence=message.sequence_id,
        create_time=timestamp(message.created_at),
    )


def usage_to_proto(prompt: int, completion: int, steps: int) -> run_pb2.Usage:
    return run_pb2.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        step_count=steps,
    )


def run_to_proto(view: RunView) -> run_pb2.Run:
    run = view.run
    return run_pb2.Run(
        name=f"runs/{run.id}",
        id=run.id,
        agent=f"agents/{run.agent_id}",
        status=STATUS_TO_PROTO.get(run.status, run_pb2.RUN_STATUS_UNSPECIFIED),
        stop_reason=STOP_REASON_TO_PROTO.get(run.stop_reason or "", 0),
        error=run.error or "",
        usage=usage_to_proto(view.prompt_tokens, view.completion_tokens, view.step_count),
        create_time=timestamp(run.created_at),
        end_time=timestamp(run.completed_at),
    )


def step_to_proto(step: Step) -> run_pb2.Step:
    return run_pb2.Step(
        name=f"runs/{step.run_id}/steps/{step.id}",
        id=step.id,
        provider=step.provider or "",
        model=step.model or "",
        usage=usage_to_proto(step.prompt_tokens, step.completion_tokens, 1),
        start_time=timestamp(step.started_at),
        end_time=timestamp(step.finished_at),
    )


def _turn_request(request: Any) -> tuple[str, str, int]:
    """The agent id, text and step limit of a Send/StreamMessage request."""
    agent_id = agent_id_of(request.agent, "agent")
    if not request.text.strip():
        raise InvalidArgumentError.field("text", "is required")
    return agent_id, request.text, _max_steps(request.max_steps)


def _max_steps(requested: int) -> int:
    """The step limit a request asks for; 0 means the default."""
    if not 0 <= requested <= MAX_STEPS_LIMIT:
        raise InvalidArgumentError.field("max_steps", f"must be between 0 and {MAX_STEPS_LIMIT}")
    return requested or DEFAULT_MAX_STEPS


class _EventStream:
    """Numbers the events of one run and translates them to ``TurnEvent``."""

    def __init__(self) -> None:
        self.run = ""
        self.seq = 0
        self.step = 0

    def make(
        self, step: int | None = None, message_id: str = "", **event: Any
    ) -> message_service_pb2.TurnEvent:
        self.seq += 1
        return message_service_pb2.TurnEvent(
            run=self.run,
            seq=self.seq,
            step=self.step if step is None else step,
            message_id=message_id,
            **event,
        )

    def translate(self, item: RunEvent) -> list[message_service_pb2.TurnEvent]:
        event = item.event
        if isinstance(event, RunStarted):
            self.run = f"runs/{item.run_id}"
            return []
        if isinstance(event, StepStarted):
            self.step = event.step
            return []
        if isinstance(event, ReasoningEvent):
            return [
                self.make(
                    message_id=event.message_id,
                    reasoning=message_service_pb2.ReasoningEvent(text=event.text),
                )
            ]
        if isinstance(event, AssistantEvent):
            return [
                self.make(
                    message_id=event.message_id,
                    assistant_message=message_service_pb2.AssistantMessageEvent(text=event.text),
                )
            ]
        if isinstance(event, ToolCallDeltaEvent):
            return [
                self.make(
                    message_id=event.message_id,
                    tool_call_delta=message_service_pb2.ToolCallDeltaEvent(
                        index=event.index,
                        call_id=event.call_id,
                        name=event.name,
                        arguments_delta=event.arguments,
                    ),
                )
            ]
        if isinstance(event, HiddenReasoningEvent):
            return [
                self.make(
                    message_id=event.message_id,
                    hidden_reasoning=message_service_pb2.HiddenReasoningEvent(),
                )
            ]
        if isinstance(event, ToolCallEvent):
            call = event.call
            return [
                self.make(
                    message_id=event.message_id,
                    tool_call=message_service_pb2.ToolCallEvent(
                        call_id=call.id, name=call.name, arguments=call.arguments
                    ),
                )
            ]
        if isinstance(event, ToolReturnEvent):
            return [
                self.make(
                    message_id=event.message_id,
                    tool_return=message_service_pb2.ToolReturnEvent(
                        call_id=event.call_id, name=event.name, text=event.text, ok=event.ok
                    ),
                )
            ]
        if isinstance(event, ApprovalRequestEvent):
            call = event.call
            return [
                self.make(
                    message_id=event.message_id,
                    approval_request=message_service_pb2.ApprovalRequestEvent(
                        call_id=call.id, name=call.name, arguments=call.arguments
                    ),
                )
            ]
        if isinstance(event, TurnFinished):
            usage = usage_to_proto(event.prompt_tokens, event.completion_tokens, event.steps)
            return [
                self.make(
                    step=0,
                    stop_reason=message_service_pb2.StopReasonEvent(
                        stop_reason=STOP_REASON_TO_PROTO.get(event.stop_reason.value, 0)
                    ),
                ),
                self.make(step=0, usage=message_service_pb2.UsageEvent(usage=usage)),
            ]
        return []


async def _with_pings(
    events: AsyncIterator[RunEvent], interval: float
) -> AsyncIterator[RunEvent | None]:
    """``events``, with None whenever ``interval`` seconds pass without one.

    The events are read by a separate task through a queue, so a ping never
    cancels (and so never breaks) the turn that is producing them; when the
    caller stops listening the task is cancelled.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def produce() -> None:
        try:
            async for event in events:
                await queue.put(("event", event))
        except BaseException as error:  # relayed to the consumer, cancellation included
            await queue.put(("error", error))
            return
        await queue.put(("end", None))

    producer = asyncio.create_task(produce())
    try:
        while True:
            try:
                kind, value = await asyncio.wait_for(queue.get(), timeout=interval)
            except TimeoutError:
                yield None
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await producer


def _roles_of(request: Any) -> list[str]:
    """The request's ``roles`` filter as role names."""
    roles = []
    for index, role in enumerate(request.roles):
        if role not in ROLE_FROM_PROTO:
            raise InvalidArgumentError.field(f"roles[{index}]", "is not a message role")
        roles.append(ROLE_FROM_PROTO[role])
    return roles


def _time_of(request: Any, field: str) -> datetime | None:
    """An optional Timestamp field as an aware UTC datetime."""
    if not request.HasField(field):
        return None
    moment: datetime = getattr(request, field).ToDatetime(tzinfo=UTC)
    return moment


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline on the monotonic clock, or None when it set none.

    Python does not pass a call's deadline on by itself; the runtime hands it
    to every provider call so that none outlives the client waiting for it.
    """
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return time.monotonic() + float(remaining)


class MessageServicer(message_service_pb2_grpc.MessageServiceServicer):
    def __init__(self, app: Application) -> None:
        self.app = app

    @property
    def service(self) -> MessageService:
        return self.app.services.messages

    @property
    def _coalesce_seconds(self) -> float:
        """How long token-stream pieces may be held to be merged (the server's setting)."""
        return self.app.settings.stream_coalesce_ms / 1000

    async def SendMessage(
        self, request: message_service_pb2.SendMessageRequest, context: grpc.aio.ServicerContext
    ) -> message_service_pb2.SendMessageResponse:
        caller = current_caller()
        agent_id, text, max_steps = _turn_request(request)
        run_id = ""
        turn = self.service.send(
            caller, agent_id, text, max_steps=max_steps, deadline=_deadline(context)
        )
        async for item in turn:
            run_id = item.run_id
        run = await self.service.get_run(caller, run_id)
        messages = await self.service.messages_of_run(caller, run_id)
        return message_service_pb2.SendMessageResponse(
            run=run_to_proto(run), messages=[message_to_proto(m) for m in messages]
        )

    async def StreamMessage(
        self,
        request: message_service_pb2.StreamMessageRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[message_service_pb2.TurnEvent]:
        agent_id, text, max_steps = _turn_request(request)
        turn = self.service.send(
            current_caller(),
            agent_id,
            text,
            stream_tokens=request.stream_tokens,
            coalesce_seconds=self._coalesce_seconds,
            max_steps=max_steps,
            deadline=_deadline(context),
        )
        async for event in self._stream_turn(turn):
            yield event

    async def SubmitApproval(
        self,
        request: message_service_pb2.SubmitApprovalRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[message_service_pb2.TurnEvent]:
        agent_id = agent_id_of(request.agent, "agent")
        if not request.call_id.strip():
            raise InvalidArgumentError.field("call_id", "is required")
        turn = self.service.submit_approval(
            current_caller(),
            agent_id,
            request.call_id,
            request.approve,
            request.reason,
            stream_tokens=request.stream_tokens,
            coalesce_seconds=self._coalesce_seconds,
            max_steps=_max_steps(request.max_steps),
            deadline=_deadline(context),
        )
        async for event in self._stream_turn(turn):
            yield event

    async def _stream_turn(
        self, turn: AsyncIterator[RunEvent]
    ) -> AsyncIterator[message_service_pb2.TurnEvent]:
        """A turn as the client streams it: numbered events, pings, and failures as events.

        Shared by every streaming RPC, so a continued turn reads exactly like
        one started by a message.
        """
        stream = _EventStream()
        interval = self.app.settings.stream_ping_interval_seconds
        try:
            async for item in _with_pings(turn, interval):
                if item is None:
                    if stream.run:
                        yield stream.make(step=0, ping=message_service_pb2.PingEvent())
                    continue
                for event in stream.translate(item):
                    yield event
        except Exception as error:
            if not stream.run:
                raise  # refused before the run started: an ordinary error status
            # Once the run exists the failure is part of its stream.
            mapped = map_error(error, correlation_id=current_request_id() or uuid.uuid4().hex)
            yield stream.make(step=0, error=message_service_pb2.ErrorEvent(status=mapped.status))

    async def ListMessages(
        self, request: message_service_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> message_service_pb2.ListMessagesResponse:
        agent_id = agent_id_of(request.parent, "parent")
        messages, token = await self.service.list_messages(
            current_caller(),
            agent_id,
            page_size=request.page_size,
            page_token=request.page_token,
            newest_first=request.newest_first,
            roles=_roles_of(request),
            start_time=_time_of(request, "start_time"),
            end_time=_time_of(request, "end_time"),
        )
        return message_service_pb2.ListMessagesResponse(
            messages=[message_to_proto(m) for m in messages], next_page_token=token
        )

    async def SearchMessages(
        self,
        request: message_service_pb2.SearchMessagesRequest,
        context: grpc.aio.ServicerContext,
    ) -> message_service_pb2.SearchMessagesResponse:
        agent_id = agent_id_of(request.parent, "parent")
        hits, token = await self.app.services.message_search.search(
            current_caller(),
            agent_id,
            request.query,
            roles=_roles_of(request),
            start_time=_time_of(request, "start_time"),
            end_time=_time_of(request, "end_time"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return message_service_pb2.SearchMessagesResponse(
            results=[
                message_service_pb2.MessageSearchResult(
                    message=message_to_proto(hit.message), relevance=hit.score
                )
                for hit in hits
            ],
            next_page_token=token,
        )

    async def GetContextWindow(
        self,
        request: message_service_pb2.GetContextWindowRequest,
        context: grpc.aio.ServicerContext,
    ) -> message_service_pb2.ContextWindow:
        name = request.name
        if not name.endswith(CONTEXT_WINDOW_SUFFIX):
            raise InvalidArgumentError.field(
                "name", "must be a resource name of the form agents/agent-<uuid4>/contextWindow"
            )
        agent_name = name.removesuffix(CONTEXT_WINDOW_SUFFIX)
        overview = await self.service.context_window(
            current_caller(), agent_id_of(agent_name, "name")
        )
        return message_service_pb2.ContextWindow(
            name=name,
            limit=overview.window,
            total_tokens=overview.total_tokens,
            system_prompt_tokens=overview.system_prompt_tokens,
            core_memory_tokens=overview.core_memory_tokens,
            tool_rules_tokens=overview.tool_rules_tokens,
            memory_statistics_tokens=overview.memory_statistics_tokens,
            summary_tokens=overview.summary_tokens,
            messages_tokens=overview.messages_tokens,
            tool_definitions_tokens=overview.tool_definitions_tokens,
            files_tokens=overview.files_tokens,
            message_count=overview.message_count,
            system_message=overview.system_message,
        )

    async def ResetMessages(
        self, request: message_service_pb2.ResetMessagesRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.service.reset_messages(current_caller(), agent_id_of(request.agent, "agent"))
        return empty_pb2.Empty()


def run_id_of(name: str, field: str) -> str:
    return resource_id(name, "runs", IdPrefix.RUN, field)


class RunServicer(message_service_pb2_grpc.RunServiceServicer):
    def __init__(self, app: Application) -> None:
        self.app = app

    @property
    def service(self) -> MessageService:
        return self.app.services.messages

    async def GetRun(
        self, request: message_service_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> run_pb2.Run:
        view = await self.service.get_run(current_caller(), run_id_of(request.name, "name"))
        return run_to_proto(view)

    async def ListRuns(
        self, request: message_service_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> message_service_pb2.ListRunsResponse:
        agent_id = agent_id_of(request.agent, "agent") if request.agent else None
        runs, token = await self.service.list_runs(
            current_caller(), agent_id, page_size=request.page_size, page_token=request.page_token
        )
        return message_service_pb2.ListRunsResponse(
            runs=[run_to_proto(run) for run in runs], next_page_token=token
        )

    async def ListRunSteps(
        self, request: message_service_pb2.ListRunStepsRequest, context: grpc.aio.ServicerContext
    ) -> message_service_pb2.ListRunStepsResponse:
        steps, token = await self.service.list_steps(
            current_caller(),
            run_id_of(request.parent, "parent"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return message_service_pb2.ListRunStepsResponse(
            steps=[step_to_proto(step) for step in steps], next_page_token=token
        )
