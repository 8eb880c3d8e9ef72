"""File tools: agents reading the files of the data sources attached to them.

Three tools, run by the agent loop through :class:`FileToolService`:

* ``open_files`` puts a window of a file's lines into the agent's system
  message (:func:`files_section`), where the model sees it on every step
  until it closes the file.  At most :data:`MAX_OPEN_FILES` files are open
  at once (opening one more closes the least recently opened), and an open
  file shows at most :data:`VIEW_CHAR_LIMIT` characters;
* ``grep_files`` matches a regular expression against the text of every
  attached file, with lines of context, a page of matches at a time.  The
  pattern runs under the ``regex`` module's timeout in a worker thread, so a
  pattern that backtracks forever costs a bounded amount of CPU and never
  blocks the event loop;
* ``semantic_search_files`` embeds the query with each source's model and
  returns the closest chunks, with the file and lines they come from.

An agent sees only the files of sources attached to it, which belong to its
organization (the scoped session filters every query).  The model's mistakes
(an unknown or unready file, bad arguments, a bad pattern) come back as
failed tool results it can act on; they never end the turn.

The tools are given to an agent when a source is attached to it and taken
away when its last source is detached (see :mod:`engram.services.sources`).
"""

from __future__ import annotations

import asyncio
import bisect
import fnmatch
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import regex
from sqlalchemy import and_, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from engram.adapters.llm.errors import ProviderError
from engram.services.base_tools import GREP_PAGE_SIZE, MAX_OPEN_FILES, ensure_base_tools
from engram.services.passages import PassageQuery, PassageService
from engram.services.runtime.memory_prompt import FileEntry, FileWindow, render_files
from engram.services.runtime.turn import ToolOutcome
from engram.store.agent_state import MAX_LISTED_FILES, ListedFile, files_listing, listed_file
from engram.store.database import Database
from engram.store.models import (
    Agent,
    AgentTool,
    Archive,
    FileView,
    Passage,
    Source,
    SourceAgent,
    SourceFile,
    Tool,
)
from engram.store.types import utc_now

OPEN_FILES = "open_files"
GREP_FILES = "grep_files"
SEMANTIC_SEARCH_FILES = "semantic_search_files"
FILE_TOOLS: tuple[str, ...] = (OPEN_FILES, GREP_FILES, SEMANTIC_SEARCH_FILES)

# The most characters of one open file the system message shows.
VIEW_CHAR_LIMIT = 15_000
# Open files with more text than this together get their windows cut in a thread.
INLINE_WINDOW_CHARS = 200_000
# grep_files: lines of context, how long a pattern may run.  (MAX_OPEN_FILES and
# GREP_PAGE_SIZE are in base_tools, whose descriptions name them.)
GREP_DEFAULT_CONTEXT = 1
GREP_MAX_CONTEXT = 10
GREP_TIMEOUT_SECONDS = 2.0
GREP_MAX_PATTERN = 1000
# Matches are counted up to this many; a longer result says "more than".
GREP_MAX_COUNTED = 1000
# A line shown by grep is cut to this many characters.
GREP_LINE_CHARS = 300
SEMANTIC_DEFAULT_LIMIT = 5
SEMANTIC_MAX_LIMIT = 20
RELEVANCE_DIGITS = 3


class FileToolError(ValueError):
    """A mistake of the model's, told back to it as the tool's result."""


@dataclass(frozen=True)
class _Attached:
    """A file of a source attached to the agent, without its text."""

    id: str
    source: str
    file_name: str
    status: str
    error: str
    has_text: bool

    @property
    def name(self) -> str:
        return f"{self.source}/{self.file_name}"


@dataclass(frozen=True)
class _OpenRequest:
    name: str
    offset: int  # lines skipped from the top
    length: int  # lines in view; 0 = as many as the character limit allows


# --- the system message's file section ------------------------------------------------------


async def files_section(session: AsyncSession, agent_id: str) -> str:
    """The agent's attached files and the open ones' windows, as the system message shows them."""
    rows = (await session.execute(files_listing(agent_id))).all()
    return await files_section_of(session, agent_id, [listed_file(row) for row in rows])


async def files_section_of(
    session: AsyncSession, agent_id: str, listed: Sequence[ListedFile]
) -> str:
    """:func:`files_section` from the listing already read (one past the limit at most).

    Reads more only when needed: the open files' texts, and how many files
    there are when they are too many to list.
    """
    if not listed:
        return render_files([], more=0)
    more = 0
    if len(listed) > MAX_LISTED_FILES:
        listed = listed[:MAX_LISTED_FILES]
        more = await _attached_count(session, agent_id) - MAX_LISTED_FILES
    views = {
        file.id: (file.start_line, file.line_count or 0)
        for file in listed
        if file.start_line is not None
    }
    texts = await _texts(session, list(views))

    def windows() -> dict[str, FileWindow]:
        return {i: view_window(texts[i], *views[i]) for i in views if i in texts}

    # Cutting a window out of a large file is milliseconds of CPU: off the loop then.
    large = sum(len(text) for text in texts.values()) > INLINE_WINDOW_CHARS
    cut = await asyncio.to_thread(windows) if large else windows()
    entries = [
        FileEntry(f"{file.source}/{file.file_name}", file.has_text, cut.get(file.id))
        for file in listed
    ]
    return render_files(entries, more=more)


def view_window(text: str, start_line: int, line_count: int) -> FileWindow:
    """The lines from ``start_line`` (1-based), ``line_count`` of them (0: all that fit).

    Lines are added while they fit in :data:`VIEW_CHAR_LIMIT`; a first line
    longer than the limit is cut, so an open file always shows something.
    Only the text up to the window's end is split (in C), which keeps this
    cheap enough for the event loop even deep into a large file.
    """
    total = _line_total(text)
    # No more lines than characters fit: each takes at least its newline.
    most = min(line_count or VIEW_CHAR_LIMIT, VIEW_CHAR_LIMIT)
    last = min(start_line - 1 + most, total)
    wanted = text.split("\n", last)[start_line - 1 : last] if last >= start_line else []
    shown: list[str] = []
    used = 0
    for line in wanted:
        if used + len(line) + 1 > VIEW_CHAR_LIMIT:
            if not shown:
                shown.append(line[:VIEW_CHAR_LIMIT])
            break
        shown.append(line)
        used += len(line) + 1
    cut = len(shown) < len(wanted) or (not line_count and start_line - 1 + len(shown) < total)
    return FileWindow(start_line, tuple(shown), total, cut=cut)


def _line_total(text: str) -> int:
    """How many lines the text has; a final newline does not start another line."""
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def _lines(text: str) -> list[str]:
    """The text's lines; a final newline does not start another line."""
    if not text:
        return []
    return text.removesuffix("\n").split("\n")


def _attached_to(agent_id: str) -> Any:
    return and_(SourceAgent.source_id == Source.id, SourceAgent.agent_id == agent_id)


async def _attached_count(session: AsyncSession, agent_id: str) -> int:
    return len(await _attached(session, agent_id))


async def _attached(session: AsyncSession, agent_id: str) -> list[_Attached]:
    rows = await session.execute(
        select(
            SourceFile.id,
            Source.name,
            SourceFile.file_name,
            SourceFile.status,
            SourceFile.error,
            SourceFile.text.is_not(None),
        )
        .join(Source, Source.id == SourceFile.source_id)
        .join(SourceAgent, _attached_to(agent_id))
        .order_by(Source.name, SourceFile.file_name, SourceFile.id)
    )
    return [_Attached(*row[:5], has_text=bool(row[5])) for row in rows]


async def _texts(session: AsyncSession, file_ids: Sequence[str]) -> dict[str, str]:
    if not file_ids:
        return {}
    rows = await session.execute(
        select(SourceFile.id, SourceFile.text).where(SourceFile.id.in_(file_ids))
    )
    return {file_id: text for file_id, text in rows if text is not None}


# --- attaching the tools --------------------------------------------------------------------


async def give_file_tools(session: AsyncSession, agent_id: str) -> None:
    """Attach the file tools to the agent (a source was attached to it)."""
    tool_ids = await ensure_base_tools(session, FILE_TOOLS)
    added = False
    for tool_id in tool_ids.values():
        if await session.get(AgentTool, (agent_id, tool_id)) is None:
            session.add(AgentTool(agent_id=agent_id, tool_id=tool_id))
            added = True
    if added:
        await _touch_agent(session, agent_id)


async def _touch_agent(session: AsyncSession, agent_id: str) -> None:
    """The agent's tools are part of the Agent resource: a change moves its etag."""
    agent = await session.get(Agent, agent_id)
    if agent is not None:
        agent.updated_at = utc_now()  # flushing bumps the version, and with it the etag


async def forget_source_files(session: AsyncSession, agent_id: str, source_id: str) -> None:
    """A source was detached: close its files, and take the tools when no source is left."""
    files = select(SourceFile.id).where(SourceFile.source_id == source_id)
    await session.execute(
        delete(FileView).where(FileView.agent_id == agent_id, FileView.file_id.in_(files))
    )
    left = await session.scalar(
        select(SourceAgent.source_id).where(SourceAgent.agent_id == agent_id)
    )
    if left is None:
        tools = select(Tool.id).where(Tool.name.in_(FILE_TOOLS))
        removed = await session.execute(
            delete(AgentTool).where(AgentTool.agent_id == agent_id, AgentTool.tool_id.in_(tools))
        )
        if getattr(removed, "rowcount", 0):
            await _touch_agent(session, agent_id)


# --- the tools ------------------------------------------------------------------------------


class FileToolService:
    """Runs the file tools for an agent's turn."""

    def __init__(self, database: Database, passages: PassageService) -> None:
        self.database = database
        # Its embedding registry and vector indexes serve semantic_search_files.
        self.passages = passages

    async def section(self, organization_id: str, agent_id: str) -> str:
        """The system message's file section as it is now (after open_files)."""
        async with self.database.read(organization_id) as session:
            return await files_section(session, agent_id)

    async def run(
        self, organization_id: str, agent_id: str, name: str, arguments: Mapping[str, Any]
    ) -> ToolOutcome:
        """Run one file tool; the model's mistakes come back as a failed result."""
        try:
            if name == OPEN_FILES:
                return ToolOutcome(await self._open(organization_id, agent_id, arguments))
            if name == GREP_FILES:
                return ToolOutcome(await self._grep(organization_id, agent_id, arguments))
            return ToolOutcome(await self._semantic(organization_id, agent_id, arguments))
        except FileToolError as error:
            return ToolOutcome(str(error), ok=False)
        except ProviderError as error:
            return ToolOutcome(f"Searching files by meaning failed just now: {error}", ok=False)

    # --- open_files ---------------------------------------------------------------------

    async def _open(self, organization_id: str, agent_id: str, arguments: Mapping[str, Any]) -> str:
        requests = _open_requests(arguments.get("file_requests"))
        close_names = _names(arguments.get("close"), "close")
        close_others = arguments.get("close_all_others", False)
        if not isinstance(close_others, bool):
            raise FileToolError("The argument 'close_all_others' must be true or false.")
        if not requests and not close_names and not close_others:
            raise FileToolError("Name at least one file to open (file_requests) or to close.")

        async def work(session: AsyncSession) -> str:
            attached = await _attached(session, agent_id)
            opening = [(_resolve(attached, request.name), request) for request in requests]
            closing = [_resolve(attached, name) for name in close_names]
            texts = await _texts(session, [file.id for file, _ in opening])
            windows = [_checked_window(file, request, texts) for file, request in opening]
            keep = {file.id for file, _ in opening}
            if close_others:
                await _close(session, agent_id, FileView.file_id.not_in(keep))
            await _close(session, agent_id, FileView.file_id.in_([f.id for f in closing]))
            now = utc_now()
            for index, (file, request) in enumerate(opening):
                # Distinct times keep "least recently opened" well defined within one call.
                when = now + timedelta(microseconds=index)
                await _remember(session, agent_id, file.id, request, when)
            evicted = await _evict(session, agent_id, attached)
            report = [
                f"Opened {file.name} ({_describe(window)})."
                for (file, _), window in zip(opening, windows, strict=True)
            ]
            if closing:
                report.append(f"Closed {', '.join(file.name for file in closing)}.")
            if close_others:
                report.append("Closed every other file.")
            if evicted:
                report.append(
                    f"Closed {', '.join(evicted)}: at most {MAX_OPEN_FILES} files stay open, "
                    "and the least recently opened go first."
                )
            if opening:
                report.append("Their lines are in your system message now.")
            return " ".join(report)

        return await self.database.run_transaction(work, organization_id)

    # --- grep_files ---------------------------------------------------------------------

    async def _grep(self, organization_id: str, agent_id: str, arguments: Mapping[str, Any]) -> str:
        pattern = arguments.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise FileToolError("The argument 'pattern' must be a regular expression.")
        if len(pattern) > GREP_MAX_PATTERN:
            raise FileToolError(f"The pattern is longer than {GREP_MAX_PATTERN} characters.")
        include = arguments.get("include")
        if include is not None and not isinstance(include, str):
            raise FileToolError("The argument 'include' must be a file name pattern like '*.md'.")
        context = _int_argument(arguments, "context_lines", GREP_DEFAULT_CONTEXT, 0)
        if context > GREP_MAX_CONTEXT:
            raise FileToolError(f"The argument 'context_lines' must be at most {GREP_MAX_CONTEXT}.")
        offset = _int_argument(arguments, "offset", 0, 0)
        try:
            compiled = regex.compile(pattern)
        except regex.error as error:
            raise FileToolError(
                f"The pattern is not a valid regular expression: {error}."
            ) from None
        async with self.database.read(organization_id) as session:
            attached = [f for f in await _attached(session, agent_id) if f.has_text]
            if include:
                attached = [f for f in attached if _included(f, include)]
            texts = await _texts(session, [file.id for file in attached])
        files = [(file.name, texts[file.id]) for file in attached if file.id in texts]
        try:
            found = await asyncio.to_thread(_find_all, compiled, files)
        except TimeoutError:
            raise FileToolError(
                f"The pattern ran longer than {GREP_TIMEOUT_SECONDS:g} seconds and was stopped; "
                "make it simpler (avoid nested repetition such as (a+)+)."
            ) from None
        return _grep_report(pattern, found, files, context, offset)

    # --- semantic_search_files ------------------------------------------------------------

    async def _semantic(
        self, organization_id: str, agent_id: str, arguments: Mapping[str, Any]
    ) -> str:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            raise FileToolError("The argument 'query' must say what to look for.")
        limit = _int_argument(arguments, "limit", SEMANTIC_DEFAULT_LIMIT, 1)
        limit = min(limit, SEMANTIC_MAX_LIMIT)
        async with self.database.read(organization_id) as session:
            archives = (
                await session.scalars(
                    select(Archive)
                    .join(Source, Source.archive_id == Archive.id)
                    .join(SourceAgent, _attached_to(agent_id))
                    .order_by(Archive.id)
                )
            ).all()
        if not archives:
            raise FileToolError("No data source is attached to you, so there is nothing to search.")
        found = await self.passages.search_archives(
            organization_id, archives, PassageQuery(query=query), limit
        )
        hits = [(hit.score, hit.passage) for hit in found]
        if not hits:
            return f"No chunk of the attached files matches {query!r}."
        async with self.database.read(organization_id) as session:
            names = {f.id: f.name for f in await _attached(session, agent_id)}
            texts = await _texts(session, [p.file_id for _, p in hits if p.file_id])
        results = [_semantic_hit(score, passage, names, texts) for score, passage in hits]
        return json.dumps(results, ensure_ascii=False)


# --- open_files helpers ---------------------------------------------------------------------


def _open_requests(value: Any) -> list[_OpenRequest]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FileToolError("The argument 'file_requests' must be a list of {file_name, ...}.")
    if len(value) > MAX_OPEN_FILES:
        raise FileToolError(f"At most {MAX_OPEN_FILES} files can be open at once.")
    requests = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("file_name"), str):
            raise FileToolError("Each file request must be an object with a 'file_name'.")
        offset = _int_argument(item, "offset", 0, 0)
        length = _int_argument(item, "length", 0, 1)
        requests.append(_OpenRequest(item["file_name"], offset, length))
    return requests


def _names(value: Any, argument: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise FileToolError(f"The argument {argument!r} must be a list of file names.")
    return list(dict.fromkeys(value))


def _int_argument(arguments: Mapping[str, Any], name: str, default: int, least: int) -> int:
    value = arguments.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise FileToolError(f"The argument {name!r} must be an integer of at least {least}.")
    return value


def _resolve(attached: Sequence[_Attached], name: str) -> _Attached:
    """The attached file called ``name``: "<source>/<file>", or a file name unique among them."""
    exact = [file for file in attached if file.name == name]
    if exact:
        return exact[0]
    bare = [file for file in attached if file.file_name == name]
    if len(bare) == 1:
        return bare[0]
    if bare:
        choices = ", ".join(file.name for file in bare)
        raise FileToolError(f"Several attached files are called {name!r}: {choices}. Name one.")
    raise FileToolError(
        f"No attached file is called {name!r}. Your files are listed in your system message "
        "as <source>/<file>."
    )


def _checked_window(file: _Attached, request: _OpenRequest, texts: Mapping[str, str]) -> FileWindow:
    if file.id not in texts:
        if file.status == "failed":
            raise FileToolError(f"{file.name} could not be read: {file.error}")
        raise FileToolError(
            f"{file.name} is not ready yet (its status is {file.status}); try again later."
        )
    window = view_window(texts[file.id], request.offset + 1, request.length)
    if request.offset and request.offset >= window.total_lines:
        raise FileToolError(
            f"{file.name} has {window.total_lines} lines; an offset of {request.offset} "
            "skips all of them."
        )
    return window


def _describe(window: FileWindow) -> str:
    if not window.lines:
        return "it is empty"
    last = window.first_line + len(window.lines) - 1
    cut = ", cut at the character limit" if window.cut else ""
    return f"lines {window.first_line}-{last} of {window.total_lines}{cut}"


async def _close(session: AsyncSession, agent_id: str, which: Any) -> None:
    await session.execute(
        update(FileView)
        .where(FileView.agent_id == agent_id, FileView.is_open.is_(True), which)
        .values(is_open=False)
    )


async def _remember(
    session: AsyncSession, agent_id: str, file_id: str, request: _OpenRequest, when: datetime
) -> None:
    view = await session.get(FileView, (agent_id, file_id))
    if view is None:
        view = FileView(agent_id=agent_id, file_id=file_id)
        session.add(view)
    view.is_open = True
    view.start_line = request.offset + 1
    view.line_count = request.length
    view.opened_at = when
    await session.flush()


async def _evict(session: AsyncSession, agent_id: str, attached: Sequence[_Attached]) -> list[str]:
    """Close the least recently opened files beyond the limit; their names."""
    open_ids = (
        await session.scalars(
            select(FileView.file_id)
            .where(FileView.agent_id == agent_id, FileView.is_open.is_(True))
            .order_by(FileView.opened_at.desc(), FileView.file_id)
        )
    ).all()
    evicted = list(open_ids[MAX_OPEN_FILES:])
    if not evicted:
        return []
    await _close(session, agent_id, FileView.file_id.in_(evicted))
    names = {file.id: file.name for file in attached}
    return [names.get(file_id, file_id) for file_id in evicted]


# --- grep_files helpers ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    file: int  # index into the searched files
    line: int  # 0-based


def _find_all(pattern: Any, files: Sequence[tuple[str, str]]) -> list[_Match]:
    """Every line with a match, file by file, up to :data:`GREP_MAX_COUNTED` + 1.

    Runs in a worker thread.  After a match the search goes on from the next
    line, so a line full of matches costs one search; all searches share one
    time budget, and TimeoutError (from the ``regex`` module, or here between
    searches) ends the whole grep when it is spent.
    """
    deadline = time.monotonic() + GREP_TIMEOUT_SECONDS
    found: list[_Match] = []
    for index, (_, text) in enumerate(files):
        starts = _line_starts(text)
        position = 0
        while True:
            budget = deadline - time.monotonic()
            if budget <= 0:
                raise TimeoutError("grep_files ran out of time")
            match = pattern.search(text, position, timeout=budget)
            if match is None:
                break
            line = bisect.bisect_right(starts, match.start()) - 1
            found.append(_Match(index, line))
            if len(found) > GREP_MAX_COUNTED:
                return found
            if line + 1 >= len(starts):
                break
            position = starts[line + 1]
    return found


def _line_starts(text: str) -> list[int]:
    starts = [0]
    position = text.find("\n")
    while position != -1:
        starts.append(position + 1)
        position = text.find("\n", position + 1)
    return starts


def _included(file: _Attached, include: str) -> bool:
    return fnmatch.fnmatchcase(file.file_name, include) or fnmatch.fnmatchcase(file.name, include)


def _grep_report(
    pattern: str,
    found: Sequence[_Match],
    files: Sequence[tuple[str, str]],
    context: int,
    offset: int,
) -> str:
    if not found:
        return f"No line of the attached files matches {pattern!r}."
    total = f"more than {GREP_MAX_COUNTED}" if len(found) > GREP_MAX_COUNTED else str(len(found))
    page = found[offset : offset + GREP_PAGE_SIZE]
    if not page:
        return f"{total} lines match {pattern!r}; an offset of {offset} is past the last."
    end = offset + len(page)
    header = f"Lines {offset + 1}-{end} of {total} matching {pattern!r}"
    more = f" (for the next ones, call again with offset={end})" if end < len(found) else ""
    lines: dict[int, list[str]] = {}
    blocks = [f"{header}{more}:"]
    for match in page:
        name, text = files[match.file]
        if match.file not in lines:
            lines[match.file] = _lines(text)
        blocks.append(_grep_block(name, lines[match.file], match.line, context))
    return "\n".join(blocks)


def _grep_block(name: str, lines: Sequence[str], line: int, context: int) -> str:
    first, last = max(line - context, 0), min(line + context, len(lines) - 1)
    shown = [f"{name}:{line + 1}"]
    for number in range(first, last + 1):
        marker = ":" if number == line else "-"
        shown.append(f"{number + 1}{marker} {lines[number][:GREP_LINE_CHARS]}")
    return "\n".join(shown)


# --- semantic_search_files helpers ----------------------------------------------------------


def _semantic_hit(
    score: float, passage: Passage, names: Mapping[str, str], texts: Mapping[str, str]
) -> dict[str, Any]:
    hit: dict[str, Any] = {
        "file": names.get(passage.file_id or "", "(no longer attached)"),
        "relevance": float(f"{score:.{RELEVANCE_DIGITS}g}"),
    }
    start, end = passage.metadata_.get("start"), passage.metadata_.get("end")
    text = texts.get(passage.file_id or "")
    if text is not None and isinstance(start, int) and isinstance(end, int):
        first = text.count("\n", 0, start) + 1
        hit["lines"] = f"{first}-{first + text.count(chr(10), start, max(end - 1, start))}"
    hit["text"] = passage.text
    return hit
