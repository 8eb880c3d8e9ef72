"""The OpenAI request body, encoded with each message's part remembered: the same JSON."""

from __future__ import annotations

import json

from engram.adapters.llm.chat import ChatMessage, ChatRequest, Role, ToolCall, ToolSpec
from engram.adapters.llm.openai_chat import request_body, request_parameters

MESSAGES = [
    ChatMessage(Role.SYSTEM, "You are terse. Ünïcode stays as is."),
    ChatMessage(Role.USER, "What is the weather in Paris?"),
    ChatMessage(
        Role.ASSISTANT, "", tool_calls=(ToolCall("c1", "get_weather", '{"city":"Paris"}'),)
    ),
    ChatMessage(Role.TOOL, '{"status": "OK", "result": "sunny"}', tool_call_id="c1"),
]
TOOLS = [ToolSpec("get_weather", "The weather.", {"type": "object", "properties": {}})]


def _request(messages: list[ChatMessage], **extra: object) -> ChatRequest:
    return ChatRequest(model="gpt-test", messages=messages, tools=TOOLS, **extra)  # type: ignore[arg-type]


def test_the_body_is_the_parameters_as_json() -> None:
    for stream in (False, True):
        request = _request(MESSAGES, temperature=0.5, max_output_tokens=100, timeout=30.0)
        expected = request_parameters(request, "max_tokens", stream=stream)
        expected.pop("timeout")  # a client option, not sent in the body
        body = request_body(request, "max_tokens", stream=stream)
        assert json.loads(body) == expected
        assert "Ünïcode".encode() in body  # not escaped, as the SDK sends it


def test_a_remembered_message_encodes_as_before() -> None:
    first = json.loads(request_body(_request(MESSAGES), "max_tokens", stream=False))
    again = json.loads(request_body(_request(MESSAGES), "max_tokens", stream=False))
    assert first == again
    # An equal message built anew, and one with its calls in a list (unhashable).
    rebuilt = [
        ChatMessage(m.role, m.content, tuple(m.tool_calls), m.tool_call_id) for m in MESSAGES
    ]
    listed = [
        *MESSAGES[:2],
        ChatMessage(Role.ASSISTANT, "", tool_calls=list(MESSAGES[2].tool_calls)),
    ]
    assert json.loads(request_body(_request(rebuilt), "max_tokens", stream=False)) == first
    assert (
        json.loads(request_body(_request(listed), "max_tokens", stream=False))["messages"]
        == first["messages"][:3]
    )
