"""Searching an agent's conversation: the SearchMessages call and the conversation_search tool.

Both rank the same way (see :mod:`engram.store.message_search`): messages
matching more of the query's words, or matching them more often, come
first; ties go newest first.  Neither ever finds the loop's own notices to
the model or the results of earlier searches.

The two differ in who asks.  A client gets a precise error for a bad
request and pages through results.  The model gets its mistakes back as a
failed tool result it can correct, a small number of results (5 unless it
asks for more, at most 20), never the messages of the turn it is in (it has
them in view, and the question would otherwise find itself), and, without a
query, the newest messages that pass its filters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from engram.services.caller import Caller
from engram.services.common import load
from engram.services.errors import InvalidArgumentError
from engram.services.pagination import InvalidPageTokenError, PageRequest, cut_page, page_request
from engram.services.runtime.turn import ToolOutcome
from engram.store.database import Database
from engram.store.message_search import MessageSearch, SearchHit, search_messages, search_words
from engram.store.models import Agent

# The roles a stored message can have.
SEARCHABLE_ROLES = ("system", "user", "assistant", "tool")
TOOL_DEFAULT_LIMIT = 5  # what the tool's description promises the model
TOOL_MAX_LIMIT = 20
# Relevance is shown to the model to this many significant digits; more carry
# no meaning.  Significant, not decimal: BM25 scores of a short history are tiny.
RELEVANCE_DIGITS = 3


class MessageSearchService:
    """Ranked full-text search of one agent's messages, for clients."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def search(
        self,
        caller: Caller,
        agent_id: str,
        query: str,
        *,
        roles: Sequence[str] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[SearchHit], str]:
        """One page of the agent's messages matching ``query``, best first.

        Messages written in ``[start_time, end_time)`` only, when given.  A
        query with no words at all (only punctuation) finds nothing.
        """
        if not query.strip():
            raise InvalidArgumentError.field("query", "is required")
        wanted = _checked_roles(roles)
        if start_time is not None and end_time is not None and end_time <= start_time:
            raise InvalidArgumentError.field("end_time", "must be after start_time")
        words = search_words(query)
        page = page_request(
            page_size,
            page_token,
            {
                "agent": agent_id,
                "words": words,
                "roles": wanted,
                "start": start_time.isoformat() if start_time else "",
                "end": end_time.isoformat() if end_time else "",
            },
        )
        search = MessageSearch(
            agent_id=agent_id,
            words=words,
            roles=wanted,
            start_time=start_time,
            end_time=end_time,
        )
        async with self.database.read(caller.organization_id) as session:
            await load(session, Agent, agent_id, "agent")
            if not words:
                return [], ""
            hits = await search_messages(
                session, search, limit=page.size + 1, after=_position_after(page)
            )
        return cut_page(hits, page, lambda hit: hit.position)


def _checked_roles(roles: Sequence[str]) -> list[str]:
    wanted = sorted(set(roles))
    unknown = [role for role in wanted if role not in SEARCHABLE_ROLES]
    if unknown:
        raise InvalidArgumentError.field(
            "roles", f"unknown role {unknown[0]!r}; use {', '.join(SEARCHABLE_ROLES)}"
        )
    return wanted


def _position_after(page: PageRequest) -> tuple[float, int] | None:
    """The (score, sequence) position a page token resumes after."""
    if page.after is None:
        return None
    if len(page.after) != 2:
        raise InvalidPageTokenError.field("page_token", "is not a token this server issued")
    score, sequence = page.after
    if (
        isinstance(score, bool)
        or not isinstance(score, int | float)
        or isinstance(sequence, bool)
        or not isinstance(sequence, int)
    ):
        raise InvalidPageTokenError.field("page_token", "is not a token this server issued")
    return float(score), sequence


# --- the conversation_search tool ------------------------------------------------------


async def conversation_search(
    database: Database,
    organization_id: str,
    agent_id: str,
    run_id: str,
    arguments: Mapping[str, Any],
) -> ToolOutcome:
    """Run the tool for the agent's turn ``run_id``; bad arguments are a failed result."""
    try:
        search, limit = _tool_search(agent_id, run_id, arguments)
    except ValueError as error:
        return ToolOutcome(str(error), ok=False)
    asked = str(arguments.get("query") or "").strip()
    if asked and not search.words:
        return ToolOutcome(f"No earlier message matches {asked!r}.")
    async with database.read(organization_id) as session:
        hits = await search_messages(session, search, limit=limit)
    if not hits:
        return ToolOutcome(f"No earlier message matches {asked!r}." if asked else "No messages.")
    found = [_tool_result(hit, ranked=bool(search.words)) for hit in hits]
    return ToolOutcome(json.dumps(found, ensure_ascii=False))


def _tool_result(hit: SearchHit, *, ranked: bool) -> dict[str, Any]:
    row = hit.message
    result: dict[str, Any] = {
        "time": row.created_at.isoformat(timespec="seconds"),
        "role": row.role,
        "text": row.text,
    }
    if not row.text and row.tool_calls:
        # Found by the arguments of its calls: show them, or the result says nothing.
        result["calls"] = [
            {"name": call.get("name"), "arguments": call.get("arguments")}
            for call in row.tool_calls
        ]
    if ranked:
        result["relevance"] = float(f"{hit.score:.{RELEVANCE_DIGITS}g}")
    return result


def _tool_search(
    agent_id: str, run_id: str, arguments: Mapping[str, Any]
) -> tuple[MessageSearch, int]:
    """The tool's arguments as a search; ValueError (for the model) on one it cannot use."""
    roles = arguments.get("roles") or []
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ValueError("The argument 'roles' must be a list of role names.")
    start, end = arguments.get("start_date"), arguments.get("end_date")
    search = MessageSearch(
        agent_id=agent_id,
        words=search_words(str(arguments.get("query") or "")),
        roles=roles,
        start_time=_moment(start, "start_date", end_of_day=False) if start else None,
        # The end date is inclusive for the model; the search's end is exclusive.
        end_time=(
            _moment(end, "end_date", end_of_day=True) + timedelta(microseconds=1) if end else None
        ),
        exclude_run_id=run_id,
    )
    return search, _tool_limit(arguments.get("limit"))


def _tool_limit(value: Any) -> int:
    if value is None:
        return TOOL_DEFAULT_LIMIT
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("The argument 'limit' must be an integer.")
    return max(1, min(value, TOOL_MAX_LIMIT))


def _moment(value: Any, name: str, *, end_of_day: bool) -> datetime:
    """An ISO date or time; a bare date means the whole day (UTC), hence ``end_of_day``."""
    text = str(value)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return moment + timedelta(days=1, microseconds=-1) if end_of_day else moment
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"The argument {name!r} must be an ISO date such as 2025-01-31.") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
