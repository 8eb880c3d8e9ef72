"""Real text to measure the token estimate on, cut into message-sized pieces by kind.

Used by ``tests/test_token_counting.py`` (repository files only, so the test
runs anywhere) and by ``scripts/bench-tokens`` (which adds the design
documents when they are there).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2, json_format

from engram.services.base_tools import BASE_TOOLS
from engram.v1 import agent_pb2, block_pb2, message_service_pb2, tool_pb2

REPO = Path(__file__).resolve().parents[2]
MIN_CHARS = 40  # shorter pieces are headings and blank lines: noise, not messages


def markdown_sections(paths: Iterable[Path]) -> list[str]:
    """Prose: each Markdown file cut at its headings."""
    pieces: list[str] = []
    for path in paths:
        pieces += re.split(r"\n(?=#+ )", path.read_text(encoding="utf-8"))
    return [piece for piece in pieces if len(piece.strip()) >= MIN_CHARS]


def python_definitions(paths: Iterable[Path]) -> list[str]:
    """Code: each Python file cut before its top-level and nested definitions."""
    pieces: list[str] = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        pieces += re.split(r"\n(?=\s*(?:async def |def |class |@))", text)
    return [piece for piece in pieces if len(piece.strip()) >= MIN_CHARS]


def tool_schemas() -> list[str]:
    """JSON: the built-in tools' schemas, as sent to the model."""
    return [json.dumps(tool.json_schema, ensure_ascii=False) for tool in BASE_TOOLS.values()]


def message_descriptors() -> list[str]:
    """JSON: the API's own message definitions (fields, types, numbers), one per message."""
    pieces: list[str] = []
    for module in (agent_pb2, block_pb2, tool_pb2, message_service_pb2):
        described = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(described)
        pieces += [json.dumps(json_format.MessageToDict(m)) for m in described.message_type]
    return pieces


def tool_arguments(prose: Iterable[str], limit: int = 40) -> list[str]:
    """JSON with prose inside: memory-edit arguments carrying real paragraphs."""
    return [
        json.dumps({"label": "human", "content": text[:600]}, ensure_ascii=False)
        for text in list(prose)[:limit]
    ]


def server_sources() -> list[Path]:
    root = REPO / "server" / "engram"
    return sorted(p for p in root.rglob("*.py") if "v1" not in p.relative_to(root).parts)


def repository_corpus() -> dict[str, list[str]]:
    """The fixed sample: README prose, server code, JSON, tool arguments."""
    prose = markdown_sections([REPO / "README.md"])
    return {
        "prose": prose,
        "code": python_definitions(server_sources()),
        "json": tool_schemas() + message_descriptors(),
        "arguments": tool_arguments(prose),
    }
