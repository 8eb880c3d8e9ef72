"""The wire form of a run's events: each numbered record becomes a serialized ``TurnEvent``.

The run's owner encodes every event once, as it happens; the event log keeps
these bytes and every replica streams them as they are.  Kept apart from the
servicers so that the services' wiring can hand the encoder to the run
executor without importing the servicers.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from engram.rpc.errors import map_error
from engram.services.run_events import RunRecord, RunStop, RunUsage
from engram.services.runtime.turn import (
    ApprovalRequestEvent,
    AssistantEvent,
    HiddenReasoningEvent,
    ReasoningEvent,
    ToolCallDeltaEvent,
    ToolCallEvent,
    ToolReturnEvent,
)
from engram.v1 import message_service_pb2, run_pb2

logger = logging.getLogger(__name__)

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
    "owner_lost": run_pb2.STOP_REASON_OWNER_LOST,
    "interrupted": run_pb2.STOP_REASON_INTERRUPTED,
}


def usage_to_proto(prompt: int, completion: int, steps: int) -> run_pb2.Usage:
    return run_pb2.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        step_count=steps,
    )


def encode_run_record(record: RunRecord) -> bytes:
    """A run's event as its log keeps it and clients receive it: a serialized ``TurnEvent``.

    This is the one place the stream's wire format is decided; the services
    number the events and the log stores these bytes as they are.
    """
    event = message_service_pb2.TurnEvent(
        run=f"runs/{record.run_id}",
        seq=record.seq,
        step=record.step,
        message_id=record.message_id,
        **_event_body(record),
    )
    return event.SerializeToString()


def _event_body(record: RunRecord) -> dict[str, Any]:
    """The ``event`` oneof of a record, as keyword arguments of ``TurnEvent``."""
    body = record.body
    if isinstance(body, ReasoningEvent):
        return {"reasoning": message_service_pb2.ReasoningEvent(text=body.text)}
    if isinstance(body, AssistantEvent):
        return {"assistant_message": message_service_pb2.AssistantMessageEvent(text=body.text)}
    if isinstance(body, ToolCallDeltaEvent):
        return {
            "tool_call_delta": message_service_pb2.ToolCallDeltaEvent(
                index=body.index,
                call_id=body.call_id,
                name=body.name,
                arguments_delta=body.arguments,
            )
        }
    if isinstance(body, HiddenReasoningEvent):
        return {"hidden_reasoning": message_service_pb2.HiddenReasoningEvent()}
    if isinstance(body, ToolCallEvent):
        call = body.call
        return {
            "tool_call": message_service_pb2.ToolCallEvent(
                call_id=call.id, name=call.name, arguments=call.arguments
            )
        }
    if isinstance(body, ToolReturnEvent):
        return {
            "tool_return": message_service_pb2.ToolReturnEvent(
                call_id=body.call_id, name=body.name, text=body.text, ok=body.ok
            )
        }
    if isinstance(body, ApprovalRequestEvent):
        call = body.call
        return {
            "approval_request": message_service_pb2.ApprovalRequestEvent(
                call_id=call.id, name=call.name, arguments=call.arguments
            )
        }
    if isinstance(body, RunStop):
        reason = STOP_REASON_TO_PROTO.get(body.stop_reason, run_pb2.STOP_REASON_ERROR)
        return {"stop_reason": message_service_pb2.StopReasonEvent(stop_reason=reason)}
    if isinstance(body, RunUsage):
        usage = usage_to_proto(body.prompt_tokens, body.completion_tokens, body.steps)
        return {"usage": message_service_pb2.UsageEvent(usage=usage)}
    # RunFailure: the status a unary call would have failed with.
    correlation_id = uuid.uuid4().hex
    mapped = map_error(body.error, correlation_id=correlation_id)
    if mapped.server_fault:
        logger.error("run %s failed; correlation id %s", record.run_id, correlation_id)
    return {"error": message_service_pb2.ErrorEvent(status=mapped.status)}
