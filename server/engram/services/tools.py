"""Tools: custom tools registered from source, and the built-in ones.

A custom tool's schema comes from its source, parsed and never executed
(:mod:`engram.services.tool_schema`); the source, schema, limits and
requirements are stored for the sandbox that will run it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from engram.services.base_tools import BASE_TOOLS
from engram.services.caller import Caller
from engram.services.common import check_etag, load
from engram.services.errors import FailedPreconditionError, FieldViolation, InvalidArgumentError
from engram.services.idempotency import create_once
from engram.services.pagination import by_key, cut_page, page_request
from engram.services.tool_schema import MAX_TOOL_NAME_LENGTH, derive_tool_schema
from engram.store.database import Database
from engram.store.errors import UniqueViolationError
from engram.store.json_filters import json_list_has_any
from engram.store.models import Tool
from engram.store.models.tools import DEFAULT_RETURN_CHAR_LIMIT
from engram.store.types import utc_now

CUSTOM = "custom"
PYTHON = "python"
MAX_RETURN_CHAR_LIMIT = 1_000_000
UPDATABLE_FIELDS = frozenset(
    {
        "description",
        "source_type",
        "source_code",
        "json_schema",
        "tags",
        "return_char_limit",
        "pip_requirements",
        "default_requires_approval",
        "metadata",
    }
)


def _schema_from(values: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(tool name, description, json schema) from an explicit schema or the source."""
    schema = values.get("json_schema") or {}
    if schema:
        name = str(schema.get("name", ""))
        if not name or len(name) > MAX_TOOL_NAME_LENGTH:
            raise InvalidArgumentError.field(
                "tool.json_schema.name",
                f"is required and at most {MAX_TOOL_NAME_LENGTH} characters",
            )
        if not isinstance(schema.get("parameters", {}), dict):
            raise InvalidArgumentError.field("tool.json_schema.parameters", "must be an object")
        return name, str(schema.get("description", "")), dict(schema)
    derived = derive_tool_schema(str(values.get("source_code", "")))
    return derived.name, derived.description, derived.json_schema


def _name_taken(error: UniqueViolationError, message: str) -> UniqueViolationError:
    """The store's unique violation with a message that says what the caller should do."""
    if error.constraint and "name" not in error.constraint:
        return error
    return UniqueViolationError(
        message, table=error.table, constraint=error.constraint, columns=error.columns
    )


def refuse_built_in_name(name: str) -> None:
    """Custom tools may not take a built-in tool's name.

    Built-in tools are registered lazily (by the first agent that asks for
    them), and that registration adopts whatever tool already has the name, so
    a custom tool under such a name would be attached to agents as the built-in.
    """
    if name in BASE_TOOLS:
        raise FailedPreconditionError(
            f"{name!r} is the name of a built-in tool; give the custom tool another name",
            subject=name,
            violation_type="BUILT_IN_TOOL",
        )


def validate_tool_fields(values: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    violations: list[FieldViolation] = []
    clean = dict(values)
    if creating and not str(clean.get("source_code", "")).strip():
        violations.append(FieldViolation("tool.source_code", "is required"))
    if clean.get("source_type", PYTHON) not in ("", PYTHON):
        violations.append(FieldViolation("tool.source_type", "only Python is supported"))
    if creating or "return_char_limit" in clean:
        limit = int(clean.get("return_char_limit") or 0) or DEFAULT_RETURN_CHAR_LIMIT
        if not 1 <= limit <= MAX_RETURN_CHAR_LIMIT:
            violations.append(
                FieldViolation("tool.return_char_limit", f"must be 1 to {MAX_RETURN_CHAR_LIMIT}")
            )
        clean["return_char_limit"] = limit
    for index, requirement in enumerate(clean.get("pip_requirements", [])):
        if not str(requirement.get("name", "")).strip():
            violations.append(FieldViolation(f"tool.pip_requirements[{index}].name", "is required"))
    if "tags" in clean:
        clean["tags"] = list(dict.fromkeys(str(tag) for tag in clean["tags"]))
    if violations:
        raise InvalidArgumentError(violations)
    return clean


def _apply(tool: Tool, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        if name == "metadata":
            tool.metadata_ = dict(value or {})
        elif name == "source_type":
            tool.source_type = value or PYTHON
        elif name == "pip_requirements":
            tool.pip_requirements = [dict(item) for item in value]
        elif name in ("json_schema", "description"):
            continue  # set from the derived schema below
        else:
            setattr(tool, name, value)


def _set_schema(tool: Tool, values: Mapping[str, Any], merged: Mapping[str, Any]) -> None:
    name, description, schema = _schema_from(merged)
    tool.name = name
    tool.description = str(values.get("description") or description)
    tool.json_schema = {**schema, "description": tool.description}


class ToolService:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def create(self, caller: Caller, values: Mapping[str, Any], request_id: str) -> Tool:
        clean = validate_tool_fields(values, creating=True)
        # Refuse bad source and reserved names before opening a transaction.
        refuse_built_in_name(_schema_from(clean)[0])

        async def create(session: AsyncSession) -> str:
            tool = self._new(clean)
            session.add(tool)
            await session.flush()
            return tool.id

        try:
            tool_id = await create_once(
                self.database, caller.organization_id, "CreateTool", request_id, create
            )
        except UniqueViolationError as error:
            name = _schema_from(clean)[0]
            raise _name_taken(
                error, f"a tool named {name!r} already exists; use UpsertTool to replace it"
            ) from error
        return await self.get(caller, tool_id)

    async def upsert(self, caller: Caller, values: Mapping[str, Any]) -> Tool:
        clean = validate_tool_fields(values, creating=True)
        name = _schema_from(clean)[0]
        refuse_built_in_name(name)

        async def work(session: AsyncSession) -> str:
            existing = (await session.scalars(select(Tool).where(Tool.name == name))).first()
            if existing is None:
                tool = self._new(clean)
                session.add(tool)
                await session.flush()
                return tool.id
            if existing.tool_type != CUSTOM:
                raise FailedPreconditionError(
                    f"{name!r} is a built-in tool and cannot be replaced",
                    subject=f"tools/{existing.id}",
                    violation_type="BUILT_IN_TOOL",
                )
            _apply(existing, clean)
            _set_schema(existing, clean, clean)
            existing.updated_at = utc_now()
            return existing.id

        tool_id = await self.database.run_transaction(work, caller.organization_id)
        return await self.get(caller, tool_id)

    async def get(self, caller: Caller, tool_id: str) -> Tool:
        async with self.database.read(caller.organization_id) as session:
            tool: Tool = await load(session, Tool, tool_id, "tool")
            return tool

    async def list_page(
        self, caller: Caller, *, tool_name: str, tags: list[str], page_size: int, page_token: str
    ) -> tuple[list[Tool], str]:
        page = page_request(page_size, page_token, {"name": tool_name, "tags": sorted(tags)})
        query = select(Tool)
        if tool_name:
            query = query.where(Tool.name == tool_name)
        if tags:
            query = query.where(
                json_list_has_any(self.database.engine.dialect.name, Tool.tags, tags)
            )
        async with self.database.read(caller.organization_id) as session:
            rows = (await session.scalars(by_key(query, Tool.name, Tool, page))).all()
        return cut_page(rows, page, lambda tool: (tool.name, tool.id))

    async def update(
        self, caller: Caller, tool_id: str, changes: Mapping[str, Any], etag: str
    ) -> Tool:
        clean = validate_tool_fields(changes, creating=False)

        async def work(session: AsyncSession) -> None:
            tool = await load(session, Tool, tool_id, "tool", lock=True)
            check_etag(etag, tool.version, f"tools/{tool_id}")
            if tool.tool_type != CUSTOM and set(clean) - {"tags", "metadata"}:
                raise FailedPreconditionError(
                    f"{tool.name!r} is a built-in tool; only its tags and metadata can change",
                    subject=f"tools/{tool_id}",
                    violation_type="BUILT_IN_TOOL",
                )
            _apply(tool, clean)
            if {"source_code", "json_schema", "description"} & set(clean):
                merged = {
                    "source_code": tool.source_code,
                    "json_schema": clean.get("json_schema") if "json_schema" in clean else None,
                }
                if "json_schema" not in clean and "source_code" not in clean:
                    merged["json_schema"] = tool.json_schema
                _set_schema(tool, clean, merged)
                refuse_built_in_name(tool.name)
            tool.updated_at = utc_now()

        try:
            await self.database.run_transaction(work, caller.organization_id)
        except UniqueViolationError as error:
            raise _name_taken(
                error,
                "the new source or schema renames the tool to a name another tool of the "
                "organization already has",
            ) from error
        return await self.get(caller, tool_id)

    async def delete(self, caller: Caller, tool_id: str, etag: str) -> None:
        async def work(session: AsyncSession) -> None:
            tool = await load(session, Tool, tool_id, "tool", lock=True)
            check_etag(etag, tool.version, f"tools/{tool_id}")
            await session.delete(tool)

        await self.database.run_transaction(work, caller.organization_id)

    @staticmethod
    def _new(values: Mapping[str, Any]) -> Tool:
        tool = Tool(
            tool_type=CUSTOM,
            source_type=PYTHON,
            tags=[],
            pip_requirements=[],
            metadata_={},
            default_requires_approval=False,
        )
        _apply(tool, values)
        _set_schema(tool, values, values)
        return tool
