"""MessageService and RunService: turns, the conversation, runs and their steps."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2

from engram.api.agents import agent_id_of
from engram.api.convert import resource_id, timestamp
from engram.api.turn_events import STOP_REASON_TO_PROTO, usage_to_proto
from engram.rpc.application import Application
from engram.rpc.context import current_caller
from engram.services.caller import Caller
from engram.services.errors import InvalidArgumentError
from engram.services.messages import MessageService, RunView, TurnOptions
from engram.services.run_errors import RunEventsExpiredError
from engram.store.ids import IdPrefix
from engram.store.models import Message, Step
from engram.v1 import message_pb2, message_service_pb2, message_service_pb2_grpc, run_pb2

logger = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 50
# How long CancelRun and CancelTurn wait for the run to stop when the call has no deadline.
CANCEL_WAIT_SECONDS = 30.0
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
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
STATUS_FROM_PROTO = {value: key for key, value in STATUS_TO_PROTO.items()}


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
        background=run.background,
        cancel_time=timestamp(run.cancel_requested_at),
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


def _ping(run_id: str, last_seq: int) -> message_service_pb2.TurnEvent:
    """A keepalive: not part of the run's stream, so it repeats the last event's seq."""
    return message_service_pb2.TurnEvent(
        run=f"runs/{run_id}", seq=last_seq, ping=message_service_pb2.PingEvent()
    )


def _roles_of(request: Any) -> list[str]:
    """The request's ``roles`` filter as role names."""
    return _names_of(request.roles, ROLE_FROM_PROTO, "roles", "a message role")


def _names_of(values: Any, names: dict[Any, str], field: str, what: str) -> list[str]:
    """A repeated enum filter as the domain's names; an unknown value is a bad field."""
    found = []
    for index, value in enumerate(values):
        if value not in names:
            raise InvalidArgumentError.field(f"{field}[{index}]", f"is not {what}")
        found.append(names[value])
    return found


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
        options = TurnOptions(
            max_steps=max_steps,
            # Nobody waits for a background run's answer, so the call's deadline is not its own.
            deadline=None if request.background else _deadline(context),
            request_id=request.request_id,
            background=request.background,
        )
        run_id = await self.service.start_message(caller, agent_id, text, options)
        if not request.background:
            await self._await_end(caller, run_id, context)
        run = await self.service.get_run(caller, run_id)
        messages = await self.service.messages_of_run(caller, run_id)
        return message_service_pb2.SendMessageResponse(
            run=run_to_proto(run), messages=[message_to_proto(m) for m in messages]
        )

    async def _await_end(
        self, caller: Caller, run_id: str, context: grpc.aio.ServicerContext
    ) -> None:
        """Wait for the run's last event; a failed run fails the call with the run's status.

        A retry of a run whose events are no longer kept (it ended hours ago)
        returns the run as stored: its status and error say how it ended.
        """
        try:
            final = await self._final_event(caller, run_id)
        except RunEventsExpiredError:
            return
        if final is not None and final.HasField("error"):
            status = final.error.status
            await context.abort(
                STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN),
                status.message,
                trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
            )

    async def _final_event(
        self, caller: Caller, run_id: str
    ) -> message_service_pb2.TurnEvent | None:
        following = self.service.follow(caller, run_id, 0, idle_seconds=self._idle, started=True)
        async for item in following:
            if item is not None and item.final:
                return message_service_pb2.TurnEvent.FromString(item.payload)
        return None

    async def StreamMessage(
        self,
        request: message_service_pb2.StreamMessageRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[message_service_pb2.TurnEvent]:
        caller = current_caller()
        agent_id, text, max_steps = _turn_request(request)
        options = TurnOptions(
            stream_tokens=request.stream_tokens,
            coalesce_seconds=self._coalesce_seconds,
            max_steps=max_steps,
            request_id=request.request_id,
        )
        run_id = await self.service.start_message(caller, agent_id, text, options)
        async for event in follow_run(self.service, caller, run_id, 0, self._idle, started=True):
            yield event

    async def SubmitApproval(
        self,
        request: message_service_pb2.SubmitApprovalRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[message_service_pb2.TurnEvent]:
        caller = current_caller()
        agent_id = agent_id_of(request.agent, "agent")
        if not request.call_id.strip():
            raise InvalidArgumentError.field("call_id", "is required")
        options = TurnOptions(
            stream_tokens=request.stream_tokens,
            coalesce_seconds=self._coalesce_seconds,
            max_steps=_max_steps(request.max_steps),
            request_id=request.request_id,
        )
        run_id = await self.service.start_approval(
            caller, agent_id, request.call_id, request.approve, request.reason, options
        )
        async for event in follow_run(self.service, caller, run_id, 0, self._idle, started=True):
            yield event

    @property
    def _idle(self) -> float:
        return self.app.settings.stream_ping_interval_seconds

    async def CancelTurn(
        self, request: message_service_pb2.CancelTurnRequest, context: grpc.aio.ServicerContext
    ) -> run_pb2.Run:
        view = await self.service.cancel_turn(
            current_caller(),
            agent_id_of(request.agent, "agent"),
            wait_seconds=_wait_seconds(context),
        )
        return run_to_proto(view)

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
            current_caller(),
            agent_id,
            page_size=request.page_size,
            page_token=request.page_token,
            statuses=_statuses_of(request),
            start_time=_time_of(request, "start_time"),
            end_time=_time_of(request, "end_time"),
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

    async def StreamRun(
        self, request: message_service_pb2.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[message_service_pb2.TurnEvent]:
        if request.after_seq < 0:
            raise InvalidArgumentError.field("after_seq", "must not be negative")
        run_id = run_id_of(request.name, "name")
        interval = self.app.settings.stream_ping_interval_seconds
        async for event in follow_run(
            self.service, current_caller(), run_id, request.after_seq, interval
        ):
            yield event

    async def CancelRun(
        self, request: message_service_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> run_pb2.Run:
        view = await self.service.cancel_run(
            current_caller(), run_id_of(request.name, "name"), wait_seconds=_wait_seconds(context)
        )
        return run_to_proto(view)


async def follow_run(
    service: MessageService,
    caller: Caller,
    run_id: str,
    after: int,
    idle_seconds: float,
    *,
    started: bool = False,
) -> AsyncIterator[message_service_pb2.TurnEvent]:
    """A run's events after ``after`` as the client streams them, with pings when idle.

    The events come from the run's log as the server that runs it encoded
    them, so every replica streams the same bytes for the same ``seq``.
    """
    last_seq = after
    following = service.follow(caller, run_id, after, idle_seconds=idle_seconds, started=started)
    async for item in following:
        if item is None:
            yield _ping(run_id, last_seq)
            continue
        last_seq = item.seq
        yield message_service_pb2.TurnEvent.FromString(item.payload)


def _statuses_of(request: Any) -> list[str]:
    """The request's ``statuses`` filter as run status names."""
    return _names_of(request.statuses, STATUS_FROM_PROTO, "statuses", "a run status")


def _wait_seconds(context: grpc.aio.ServicerContext) -> float:
    """How long a cancel may wait for the run to stop: the call's deadline, or a default."""
    remaining = context.time_remaining()
    if remaining is None:
        return CANCEL_WAIT_SECONDS
    # Leave a moment to read and return the run before the deadline.
    return max(0.0, min(float(remaining) - 0.5, CANCEL_WAIT_SECONDS))
