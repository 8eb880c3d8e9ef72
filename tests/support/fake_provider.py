"""A fake LLM provider: a real HTTP server speaking OpenAI Chat Completions and Anthropic Messages.

Provider adapters and the agent loop must be tested against the wire format the
official SDKs (``openai.AsyncOpenAI``, ``anthropic.AsyncAnthropic``) actually
parse, not against mocks of the SDK objects, or a change in either SDK goes
unnoticed.  So this module runs a standard-library HTTP server on 127.0.0.1 and
answers each completion request with the next reply from a per-test script::

    with FakeProvider() as provider:
        provider.script(Reply(text="hello"), ErrorReply.rate_limited(), Reply(tool_calls=[...]))
        client = AsyncOpenAI(api_key="test", base_url=provider.openai_base_url, max_retries=0)
        ...
        assert provider.requests[0].body["model"] == "gpt-4o-mini"

Routes (everything else is a 404 in the API's own error shape)::

    POST /openai/v1/chat/completions     GET /openai/v1/models[/{id}]
    POST /anthropic/v1/messages          GET /anthropic/v1/models[/{id}]
    POST /openai/v1/embeddings

Behaviour worth knowing when writing tests:

* One FIFO script serves both APIs; every completion request pops the next item
  when it arrives (before any ``delay``).  An empty script answers HTTP 500 with
  "no scripted reply" and ``x-should-retry: false``, so the SDKs fail at once.
* Requests are checked for structural mistakes the real APIs reject with HTTP
  400 (missing model, empty messages, Anthropic's missing ``max_tokens``, tool
  calls without tool results and vice versa).  Such a request does *not*
  consume a scripted reply.  Set ``provider.validate_requests = False`` to
  turn the check off.
* Finish reasons may be given in either vocabulary and are translated (see
  ``openai_finish_reason`` / ``anthropic_stop_reason``); unknown values pass
  through verbatim.
* ``ToolCall.arguments`` given as a string is sent verbatim (malformed JSON
  included): as the OpenAI ``arguments`` string and as Anthropic's streamed
  ``partial_json``.  A non-streaming Anthropic ``tool_use.input`` must be an
  object, so a string that is not a JSON object is wrapped as
  ``{RAW_ARGUMENTS_KEY: raw}``.
* Streams are sent without Content-Length and end by closing the connection;
  JSON answers carry Content-Length and keep the connection alive.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import unquote, urlsplit

JsonObject = dict[str, Any]
Api = Literal["openai", "anthropic", "unknown"]

TEXT_PIECE_CHARS = 4
"""Text and reasoning are streamed in pieces of this many characters, so streaming is real."""

ARGUMENT_PIECE_CHARS = 8
"""Tool-call arguments are streamed in pieces of this many characters."""

RAW_ARGUMENTS_KEY = "_raw_arguments"
"""Key of a non-streaming Anthropic ``tool_use.input`` that wraps raw, non-object arguments."""

DEFAULT_OPENAI_MODELS = ("gpt-4o-mini", "gpt-4o", "o3-mini")
DEFAULT_ANTHROPIC_MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-7")

_MODEL_CREATED = 1_700_000_000
_MODEL_CREATED_AT = "2025-01-01T00:00:00Z"

# --------------------------------------------------------------------------- script items


@dataclass(frozen=True)
class ToolCall:
    """A tool call the fake model makes.

    ``arguments`` is a dict (sent as JSON) or a raw string sent verbatim, which
    lets a test simulate a model that emits malformed JSON.  ``id`` None makes
    the server generate ``call_…`` (OpenAI) or ``toolu_…`` (Anthropic).
    """

    name: str
    arguments: Mapping[str, Any] | str
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """A successful model turn, rendered in whichever API the request used.

    ``finish_reason`` None picks the natural one (OpenAI ``tool_calls``/``stop``,
    Anthropic ``tool_use``/``end_turn``); a value from either vocabulary is
    translated.  ``delay`` sleeps before the response starts (timeouts,
    cancellation); ``chunk_delay`` sleeps between streamed events (cancelling
    mid-stream).

    Streaming shape: ``piece_chars`` overrides the size of streamed text,
    reasoning and argument pieces (1 makes a piece per character);
    ``interleave_tool_calls`` makes an OpenAI stream alternate the argument
    pieces of parallel calls, as some servers do; ``redacted_reasoning`` adds
    an Anthropic ``redacted_thinking`` block (OpenAI has none and ignores it).
    """

    text: str = ""
    reasoning: str = ""
    tool_calls: Sequence[ToolCall] = ()
    finish_reason: str | None = None
    prompt_tokens: int = 10
    completion_tokens: int = 5
    delay: float = 0.0
    chunk_delay: float = 0.0
    piece_chars: int | None = None
    interleave_tool_calls: bool = False
    redacted_reasoning: str = ""


@dataclass(frozen=True)
class ErrorReply:
    """An HTTP error, answered in the API's own error JSON.

    ``error_type`` empty picks the API's usual type for the status (OpenAI:
    ``invalid_request_error`` / ``requests`` for 429 / ``server_error`` for 5xx;
    Anthropic: ``authentication_error``, ``rate_limit_error``,
    ``overloaded_error`` for 529, ...).  ``code`` and ``param`` exist only in
    OpenAI's shape.  ``headers`` are added to the response (``retry-after``,
    ``x-should-retry``, ...).
    """

    status: int
    message: str
    error_type: str = ""
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    param: str | None = None
    delay: float = 0.0

    @classmethod
    def bad_key(cls) -> ErrorReply:
        """401: the API key was refused."""
        return cls(401, "invalid api key", code="invalid_api_key")

    @classmethod
    def rate_limited(cls, retry_after: float = 1) -> ErrorReply:
        """429 with a ``retry-after`` header (seconds; an int is sent without decimals)."""
        seconds = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        return cls(
            429, "rate limit exceeded", code="rate_limit_exceeded", headers={"retry-after": seconds}
        )

    @classmethod
    def context_overflow(cls) -> ErrorReply:
        """400 the way each API reports a prompt longer than the context window.

        OpenAI is recognised by ``code == "context_length_exceeded"``, Anthropic by
        an ``invalid_request_error`` whose message starts "prompt is too long".
        """
        return cls(
            400,
            "prompt is too long: 200001 tokens > 200000 maximum",
            error_type="invalid_request_error",
            code="context_length_exceeded",
            param="messages",
        )

    @classmethod
    def overloaded(cls) -> ErrorReply:
        """529: Anthropic's "overloaded" (``anthropic.OverloadedError``; in OpenAI a 5xx)."""
        return cls(529, "Overloaded")

    @classmethod
    def server_error(cls, status: int = 500, retry_after_ms: int | None = None) -> ErrorReply:
        """A 5xx; ``retry_after_ms`` makes an SDK retry after that many milliseconds."""
        headers = {} if retry_after_ms is None else {"retry-after-ms": str(retry_after_ms)}
        return cls(status, "internal server error", headers=headers)


ScriptItem = Reply | ErrorReply


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; ``headers`` keys are lower-case.

    ``path`` excludes the query string, which is in ``query``.  ``body`` is the
    decoded JSON object, or None when the body was empty or not a JSON object.
    """

    api: Api
    method: str
    path: str
    headers: dict[str, str]
    body: JsonObject | None
    query: str = ""


# --------------------------------------------------------------------------- vocabulary


_OPENAI_FROM_ANTHROPIC = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}
_ANTHROPIC_FROM_OPENAI = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}


def openai_finish_reason(reply: Reply) -> str:
    """The OpenAI ``finish_reason`` for ``reply``.

    Anthropic values map as end_turn/stop_sequence/pause_turn -> stop,
    tool_use -> tool_calls, max_tokens/model_context_window_exceeded -> length,
    refusal -> content_filter.
    """
    if reply.finish_reason is None:
        return "tool_calls" if reply.tool_calls else "stop"
    return _OPENAI_FROM_ANTHROPIC.get(reply.finish_reason, reply.finish_reason)


def anthropic_stop_reason(reply: Reply) -> str:
    """The Anthropic ``stop_reason`` for ``reply``.

    OpenAI values map as stop -> end_turn, tool_calls/function_call -> tool_use,
    length -> max_tokens, content_filter -> refusal.
    """
    if reply.finish_reason is None:
        return "tool_use" if reply.tool_calls else "end_turn"
    return _ANTHROPIC_FROM_OPENAI.get(reply.finish_reason, reply.finish_reason)


def signature_for(reasoning: str) -> str:
    """The deterministic signature of a thinking block, so tests can check it is sent back."""
    digest = hashlib.sha256(b"fake-provider-thinking:" + reasoning.encode()).digest()
    return base64.b64encode(digest).decode()


def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _pieces(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of ``size`` characters (none for an empty text)."""
    return [text[start : start + size] for start in range(0, len(text), size)]


def _arguments_text(call: ToolCall, *, compact: bool) -> str:
    """The arguments as sent on the wire: raw strings verbatim, dicts as JSON."""
    if isinstance(call.arguments, str):
        return call.arguments
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(dict(call.arguments), ensure_ascii=False, separators=separators)


def _anthropic_tool_input(call: ToolCall) -> JsonObject:
    """A non-streaming ``tool_use.input``, which must be a JSON object."""
    if not isinstance(call.arguments, str):
        return dict(call.arguments)
    try:
        parsed = json.loads(call.arguments)
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {RAW_ARGUMENTS_KEY: call.arguments}


# --------------------------------------------------------------------------- OpenAI bodies


def _openai_usage(reply: Reply) -> JsonObject:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def openai_completion(reply: Reply, model: str, call_ids: Sequence[str]) -> JsonObject:
    """A non-streaming ``chat.completion`` object for ``reply``."""
    message: JsonObject = {
        "role": "assistant",
        "content": None if reply.tool_calls and not reply.text else reply.text,
        "refusal": None,
    }
    if reply.reasoning:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments_text(call, compact=True)},
            }
            for call, call_id in zip(reply.tool_calls, call_ids, strict=True)
        ]
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": openai_finish_reason(reply),
    }
    return {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [choice],
        "usage": _openai_usage(reply),
    }


def _openai_deltas(reply: Reply, call_ids: Sequence[str]) -> Iterator[JsonObject]:
    """Role, reasoning pieces, text pieces, then each tool call's header and argument pieces."""
    text_size = reply.piece_chars or TEXT_PIECE_CHARS
    yield {"role": "assistant", "content": ""}
    for piece in _pieces(reply.reasoning, text_size):
        yield {"reasoning_content": piece}
    for piece in _pieces(reply.text, text_size):
        yield {"content": piece}
    calls = [
        _openai_call_deltas(index, call, call_id, reply.piece_chars or ARGUMENT_PIECE_CHARS)
        for index, (call, call_id) in enumerate(zip(reply.tool_calls, call_ids, strict=True))
    ]
    if reply.interleave_tool_calls:
        # Round robin: a piece of each call in turn, headers first.
        for round_ in itertools.zip_longest(*calls):
            yield from (delta for delta in round_ if delta is not None)
    else:
        for deltas in calls:
            yield from deltas


def _openai_call_deltas(index: int, call: ToolCall, call_id: str, size: int) -> list[JsonObject]:
    """One tool call's header, then its argument pieces."""
    function = {"name": call.name, "arguments": ""}
    header = {"index": index, "id": call_id, "type": "function", "function": function}
    return [
        {"tool_calls": [header]},
        *(
            {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            for piece in _pieces(_arguments_text(call, compact=True), size)
        ),
    ]


def openai_chunks(
    reply: Reply, model: str, call_ids: Sequence[str], *, include_usage: bool
) -> list[JsonObject]:
    """The ``chat.completion.chunk`` objects of a stream, without the final ``[DONE]``.

    As OpenAI does, every chunk carries ``"usage": null`` when usage was asked
    for, and a last chunk with empty ``choices`` carries the usage.
    """
    base: JsonObject = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: JsonObject, finish_reason: str | None = None) -> JsonObject:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**base, "choices": [choice]}

    chunks = [chunk(delta) for delta in _openai_deltas(reply, call_ids)]
    chunks.append(chunk({}, openai_finish_reason(reply)))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _openai_usage(reply)})
    return chunks


# --------------------------------------------------------------------------- Anthropic bodies


def _anthropic_blocks(reply: Reply, tool_ids: Sequence[str]) -> list[JsonObject]:
    blocks: list[JsonObject] = []
    if reply.reasoning:
        signature = signature_for(reply.reasoning)
        blocks.append({"type": "thinking", "thinking": reply.reasoning, "signature": signature})
    if reply.redacted_reasoning:
        blocks.append({"type": "redacted_thinking", "data": reply.redacted_reasoning})
    if reply.text:
        blocks.append({"type": "text", "text": reply.text})
    for call, tool_id in zip(reply.tool_calls, tool_ids, strict=True):
        tool_input = _anthropic_tool_input(call)
        blocks.append({"type": "tool_use", "id": tool_id, "name": call.name, "input": tool_input})
    return blocks


def _anthropic_shell(model: str, message_id: str) -> JsonObject:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model}


def anthropic_message(reply: Reply, model: str, tool_ids: Sequence[str]) -> JsonObject:
    """A non-streaming ``message`` object; blocks in the order thinking, text, tool_use."""
    return {
        **_anthropic_shell(model, _new_id("msg_")),
        "content": _anthropic_blocks(reply, tool_ids),
        "stop_reason": anthropic_stop_reason(reply),
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.prompt_tokens,
            "output_tokens": reply.completion_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def _anthropic_stream_blocks(
    reply: Reply, tool_ids: Sequence[str]
) -> Iterator[tuple[JsonObject, list[JsonObject]]]:
    """Each streamed block as (``content_block`` of its start event, its deltas)."""
    text_size = reply.piece_chars or TEXT_PIECE_CHARS
    if reply.reasoning:
        deltas = [
            {"type": "thinking_delta", "thinking": piece}
            for piece in _pieces(reply.reasoning, text_size)
        ]
        deltas.append({"type": "signature_delta", "signature": signature_for(reply.reasoning)})
        yield {"type": "thinking", "thinking": "", "signature": ""}, deltas
    if reply.redacted_reasoning:
        yield {"type": "redacted_thinking", "data": reply.redacted_reasoning}, []
    if reply.text:
        pieces = _pieces(reply.text, text_size)
        yield (
            {"type": "text", "text": ""},
            [{"type": "text_delta", "text": piece} for piece in pieces],
        )
    for call, tool_id in zip(reply.tool_calls, tool_ids, strict=True):
        size = reply.piece_chars or ARGUMENT_PIECE_CHARS
        pieces = ["", *_pieces(_arguments_text(call, compact=False), size)]
        start = {"type": "tool_use", "id": tool_id, "name": call.name, "input": {}}
        yield start, [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]


def anthropic_events(
    reply: Reply, model: str, tool_ids: Sequence[str]
) -> list[tuple[str, JsonObject]]:
    """The (event name, data) pairs of a Messages stream, ping included."""
    start_usage = {
        "input_tokens": reply.prompt_tokens,
        "output_tokens": min(reply.completion_tokens, 1),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    message = {
        **_anthropic_shell(model, _new_id("msg_")),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    events: list[tuple[str, JsonObject]] = [
        ("message_start", {"type": "message_start", "message": message}),
        ("ping", {"type": "ping"}),
    ]
    for index, (block, deltas) in enumerate(_anthropic_stream_blocks(reply, tool_ids)):
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        events.extend(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
            for delta in deltas
        )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": anthropic_stop_reason(reply), "stop_sequence": None}
    usage = {"output_tokens": reply.completion_tokens}
    events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


# --------------------------------------------------------------------------- errors


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _openai_error_type(status: int) -> str:
    if status == 429:
        return "requests"
    return "server_error" if status >= 500 else "invalid_request_error"


def _anthropic_error_type(status: int) -> str:
    if status in _ANTHROPIC_ERROR_TYPES:
        return _ANTHROPIC_ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def openai_error_body(error: ErrorReply) -> JsonObject:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    error_type = error.error_type or _openai_error_type(error.status)
    detail = {
        "message": error.message,
        "type": error_type,
        "param": error.param,
        "code": error.code,
    }
    return {"error": detail}


def anthropic_error_body(error: ErrorReply, request_id: str) -> JsonObject:
    """Anthropic's shape: ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    error_type = error.error_type or _anthropic_error_type(error.status)
    detail = {"type": error_type, "message": error.message}
    return {"type": "error", "error": detail, "request_id": request_id}


# --------------------------------------------------------------------------- request checks


def _openai_tool_pairing_problem(messages: list[Any]) -> str | None:
    """Every assistant tool call must be answered by a ``tool`` message, and only those."""
    pending: list[Any] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{index}]: a message must be an object"
        if message.get("role") == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending:
                return (
                    f"messages[{index}]: a 'tool' message must answer a tool call of the "
                    f"preceding assistant message; unknown tool_call_id {call_id!r}"
                )
            pending.remove(call_id)
            continue
        if pending:
            missing = ", ".join(map(str, pending))
            return f"messages[{index}]: tool calls without a 'tool' message: {missing}"
        if message.get("role") == "assistant":
            pending = [
                call.get("id") for call in message.get("tool_calls") or [] if isinstance(call, dict)
            ]
    if pending:
        return f"messages: tool calls without a 'tool' message: {', '.join(map(str, pending))}"
    return None


def openai_request_problem(body: JsonObject) -> str | None:
    """Why the real Chat Completions API would reject ``body`` outright, or None."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: a model name is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: a non-empty list is required"
    return _openai_tool_pairing_problem(messages)


def _blocks_of(message: JsonObject, block_type: str) -> list[JsonObject]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [
        block for block in content if isinstance(block, dict) and block.get("type") == block_type
    ]


def _anthropic_user_turn_problem(index: int, message: JsonObject, expected: set[Any]) -> str | None:
    """A user turn must answer exactly the tool uses of the assistant turn before it."""
    answered = {block.get("tool_use_id") for block in _blocks_of(message, "tool_result")}
    if unexpected := answered - expected:
        ids = ", ".join(sorted(map(str, unexpected)))
        return f"messages.{index}: tool_result blocks for unknown tool_use ids: {ids}"
    if missing := expected - answered:
        ids = ", ".join(sorted(map(str, missing)))
        return f"messages.{index}: tool_use ids without a tool_result in the next message: {ids}"
    return None


def _anthropic_tool_pairing_problem(messages: list[Any]) -> str | None:
    expected: set[Any] = set()
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{index}: a message must be an object"
        if message.get("role") == "user":
            if problem := _anthropic_user_turn_problem(index, message, expected):
                return problem
            expected = set()
            continue
        if expected:
            ids = ", ".join(sorted(map(str, expected)))
            return (
                f"messages.{index}: tool_use ids without a tool_result in the next message: {ids}"
            )
        expected = {block.get("id") for block in _blocks_of(message, "tool_use")}
    if expected:
        ids = ", ".join(sorted(map(str, expected)))
        return f"messages: tool_use ids without a tool_result in a following user message: {ids}"
    return None


def anthropic_request_problem(body: JsonObject) -> str | None:
    """Why the real Messages API would reject ``body`` outright, or None."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: a positive integer is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: a non-empty list is required"
    return _anthropic_tool_pairing_problem(messages)


# --------------------------------------------------------------------------- HTTP plumbing


@dataclass
class _Response:
    """What the handler writes: a JSON body, or SSE events when ``events`` is set."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    events: list[bytes] | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0


def _json_bytes(value: JsonObject) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _sse(data: JsonObject | str, event: str | None = None) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()


def _api_of(path: str) -> Api:
    if path.startswith("/openai/"):
        return "openai"
    return "anthropic" if path.startswith("/anthropic/") else "unknown"


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that can close its live connections, so stop() leaks no thread."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider
        self.stopping = threading.Event()
        self.connections_accepted = 0
        self._open: dict[socket.socket, threading.Thread] = {}
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="fake-provider-connection",
            daemon=True,
        )
        with self._open_lock:
            self._open[request] = thread
            self.connections_accepted += 1
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Record unexpected handler failures rather than print them; hang-ups are normal."""
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            self.provider.server_errors.append(repr(error))

    def close_connections(self, timeout: float) -> None:
        """Unblock every connection thread (waiting for a next request or sleeping) and join it."""
        with self._open_lock:
            open_connections = list(self._open.items())
        for connection, _ in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for _, thread in open_connections:
            thread.join(timeout)


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, asks the provider for a response, and writes it."""

    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes; with Nagle's algorithm on, the
    # body would wait for the client's delayed ACK (~40 ms) on a kept-alive
    # connection, which would make every JSON answer look slow.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._exchange()

    def do_POST(self) -> None:
        self._exchange()

    def do_DELETE(self) -> None:
        self._exchange()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log; tests read ``provider.requests`` instead."""

    def _exchange(self) -> None:
        try:
            response = self._response_for(self._read_request())
            self._write(response)
        except ConnectionError:
            self.close_connection = True

    def _response_for(self, request: RecordedRequest) -> _Response:
        """The provider's answer; a bug in the fake itself becomes a loud, non-retried 500."""
        try:
            return self.server.provider._respond(request)
        except Exception as error:
            self.server.provider.server_errors.append(repr(error))
            body = {
                "error": {
                    "message": f"fake provider crashed: {error!r}",
                    "type": "fake_provider_bug",
                }
            }
            return _Response(500, {"x-should-retry": "false"}, _json_bytes(body))

    def _read_request(self) -> RecordedRequest:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        url = urlsplit(self.path)
        path = unquote(url.path)
        return RecordedRequest(
            api=_api_of(path),
            method=self.command,
            path=path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body if isinstance(body, dict) else None,
            query=url.query,
        )

    def _write(self, response: _Response) -> None:
        if response.delay and self.server.stopping.wait(response.delay):
            self.close_connection = True
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.events is None:
            self._write_json(response)
        else:
            self._write_stream(response)

    def _write_json(self, response: _Response) -> None:
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def _write_stream(self, response: _Response) -> None:
        """SSE without Content-Length: the end of the body is the end of the connection."""
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for index, event in enumerate(response.events or []):
            if index and response.chunk_delay and self.server.stopping.wait(response.chunk_delay):
                return
            self.wfile.write(event)
            self.wfile.flush()


# --------------------------------------------------------------------------- the provider


class FakeProvider:
    """The scripted fake server; start it, point an SDK at a base URL, script replies.

    ``openai_models`` / ``anthropic_models`` are the model ids the models
    endpoints list; assign new lists to change them.
    """

    def __init__(self) -> None:
        self.openai_models: list[str] = list(DEFAULT_OPENAI_MODELS)
        self.anthropic_models: list[str] = list(DEFAULT_ANTHROPIC_MODELS)
        self.validate_requests = True
        self.server_errors: list[str] = []
        self._script: deque[ScriptItem] = deque()
        # Embeddings answer by themselves (see fake_embedding); only failures are scripted.
        self.embedding_dimensions = 8
        self._embedding_errors: deque[ErrorReply] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("fake provider already started")
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-provider",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut live connections, and join every thread; safe to call twice."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.stopping.set()
        server.shutdown()
        server.close_connections(timeout=5)
        server.server_close()
        thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("fake provider is not running")
        return int(self._server.server_address[1])

    @property
    def openai_base_url(self) -> str:
        """For ``AsyncOpenAI(base_url=...)``; the SDK appends ``/chat/completions``."""
        return f"http://127.0.0.1:{self.port}/openai/v1"

    @property
    def anthropic_base_url(self) -> str:
        """For ``AsyncAnthropic(base_url=...)``; the SDK appends ``/v1/messages``."""
        return f"http://127.0.0.1:{self.port}/anthropic"

    # ----------------------------------------------------------------- script and record

    def script(self, *replies: ScriptItem) -> None:
        """Queue replies; each completion request (either API) takes the next one."""
        for reply in replies:
            if not isinstance(reply, Reply | ErrorReply):
                raise TypeError(f"expected Reply or ErrorReply, got {type(reply).__name__}")
        with self._lock:
            self._script.extend(replies)

    @property
    def remaining_replies(self) -> int:
        """Scripted replies no request has taken yet."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            if not self._requests:
                raise LookupError("the fake provider has received no request")
            return self._requests[-1]

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted so far; shows whether clients reuse connections."""
        return 0 if self._server is None else self._server.connections_accepted

    def _next_reply(self) -> ScriptItem | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    # ----------------------------------------------------------------- routing

    def _respond(self, request: RecordedRequest) -> _Response:
        with self._lock:
            self._requests.append(request)
        handler = self._route(request)
        if handler is None:
            return self._error(
                request.api, ErrorReply(404, f"no route for {request.method} {request.path}")
            )
        return handler(request)

    def _route(self, request: RecordedRequest) -> Callable[[RecordedRequest], _Response] | None:
        key = (request.method, request.path)
        if key == ("POST", "/openai/v1/chat/completions"):
            return self._openai_chat
        if key == ("POST", "/anthropic/v1/messages"):
            return self._anthropic_messages
        if key == ("POST", "/openai/v1/embeddings"):
            return self._openai_embeddings
        if request.method == "GET" and request.path.startswith(
            ("/openai/v1/models", "/anthropic/v1/models")
        ):
            return self._models
        return None

    def _error(self, api: Api, error: ErrorReply) -> _Response:
        request_id = _new_id("req_")
        if api == "anthropic":
            body = anthropic_error_body(error, request_id)
            headers = {"request-id": request_id}
        else:
            body = openai_error_body(error)
            headers = {"x-request-id": request_id}
        headers.update(error.headers)
        return _Response(error.status, headers, _json_bytes(body), delay=error.delay)

    def _ok(self, api: Api, body: JsonObject) -> _Response:
        return _Response(200, self._id_header(api), _json_bytes(body))

    @staticmethod
    def _id_header(api: Api) -> dict[str, str]:
        return {"request-id" if api == "anthropic" else "x-request-id": _new_id("req_")}

    def _take_reply(self, request: RecordedRequest, problem: str | None) -> Reply | _Response:
        """The scripted reply for a completion request, or the error response to send instead."""
        if problem is not None and self.validate_requests:
            return self._error(request.api, ErrorReply(400, problem, "invalid_request_error"))
        item = self._next_reply()
        if item is None:
            message = (
                f"fake provider: no scripted reply for {request.method} {request.path}; "
                "call provider.script(...) before the request"
            )
            headers = {"x-should-retry": "false"}
            return self._error(
                request.api, ErrorReply(500, message, "no_scripted_reply", headers=headers)
            )
        return self._error(request.api, item) if isinstance(item, ErrorReply) else item

    # ----------------------------------------------------------------- endpoints

    def _openai_chat(self, request: RecordedRequest) -> _Response:
        body = request.body or {}
        reply = self._take_reply(request, openai_request_problem(body))
        if isinstance(reply, _Response):
            return reply
        model = str(body.get("model", ""))
        call_ids = [call.id or _new_id("call_") for call in reply.tool_calls]
        if body.get("stream") is not True:
            response = self._ok("openai", openai_completion(reply, model, call_ids))
        else:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            chunks = openai_chunks(reply, model, call_ids, include_usage=include_usage)
            events = [_sse(chunk) for chunk in chunks] + [_sse("[DONE]")]
            response = _Response(200, self._id_header("openai"), events=events)
        response.delay, response.chunk_delay = reply.delay, reply.chunk_delay
        return response

    def _anthropic_messages(self, request: RecordedRequest) -> _Response:
        body = request.body or {}
        reply = self._take_reply(request, anthropic_request_problem(body))
        if isinstance(reply, _Response):
            return reply
        model = str(body.get("model", ""))
        tool_ids = [call.id or _new_id("toolu_") for call in reply.tool_calls]
        if body.get("stream") is not True:
            response = self._ok("anthropic", anthropic_message(reply, model, tool_ids))
        else:
            events = [_sse(data, name) for name, data in anthropic_events(reply, model, tool_ids)]
            response = _Response(200, self._id_header("anthropic"), events=events)
        response.delay, response.chunk_delay = reply.delay, reply.chunk_delay
        return response

    def script_embedding_errors(self, *errors: ErrorReply) -> None:
        """Queue failures; each embeddings request takes the next, or succeeds if none is left."""
        with self._lock:
            self._embedding_errors.extend(errors)

    def _openai_embeddings(self, request: RecordedRequest) -> _Response:
        """Vectors from the texts themselves (``fake_embedding``), ``dimensions`` honoured."""
        with self._lock:
            error = self._embedding_errors.popleft() if self._embedding_errors else None
        if error is not None:
            return self._error("openai", error)
        body = request.body or {}
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not body.get("model") or not isinstance(texts, list) or not texts:
            return self._error("openai", ErrorReply(400, "model and input are required"))
        if any(not isinstance(text, str) or not text for text in texts):
            return self._error("openai", ErrorReply(400, "input cannot be an empty string"))
        size = int(body.get("dimensions") or self.embedding_dimensions)
        base64_wanted = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": _embedding_payload(fake_embedding(text, size), base64_wanted),
            }
            for index, text in enumerate(texts)
        ]
        tokens = sum(len(text.split()) for text in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        answer = {"object": "list", "data": data, "model": body["model"], "usage": usage}
        return self._ok("openai", answer)

    def _models(self, request: RecordedRequest) -> _Response:
        """The models list, or one model when the path names it."""
        prefix = f"/{request.api}/v1/models"
        wanted = request.path[len(prefix) :].strip("/")
        if request.api == "openai":
            models = [_openai_model(name) for name in self.openai_models]
            listing: JsonObject = {"object": "list", "data": models}
        else:
            models = [_anthropic_model(name) for name in self.anthropic_models]
            first, last = (models[0]["id"], models[-1]["id"]) if models else (None, None)
            listing = {"data": models, "has_more": False, "first_id": first, "last_id": last}
        if not wanted:
            return self._ok(request.api, listing)
        for model in models:
            if model["id"] == wanted:
                return self._ok(request.api, model)
        return self._error(
            request.api, ErrorReply(404, f"model {wanted!r} not found", code="model_not_found")
        )


def fake_embedding(text: str, size: int) -> list[float]:
    """A unit vector that depends only on ``text`` and ``size`` (the fake's embedding)."""
    digest = b""
    while len(digest) < size:
        digest += hashlib.sha256(f"{len(digest)}:{text}".encode()).digest()
    raw = [byte - 127.5 for byte in digest[:size]]
    norm = sum(value * value for value in raw) ** 0.5
    return [value / norm for value in raw]


def _embedding_payload(vector: list[float], as_base64: bool) -> list[float] | str:
    """The vector as JSON numbers, or as OpenAI's base64 of little-endian float32."""
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _openai_model(name: str) -> JsonObject:
    return {"id": name, "object": "model", "created": _MODEL_CREATED, "owned_by": "fake-provider"}


def _anthropic_model(name: str) -> JsonObject:
    return {
        "type": "model",
        "id": name,
        "display_name": name.replace("-", " ").title(),
        "created_at": _MODEL_CREATED_AT,
        "lifecycle": "active",
    }


def start_fake_provider() -> FakeProvider:
    """A started provider; the caller must ``stop()`` it (or use it as a context manager)."""
    return FakeProvider().start()
