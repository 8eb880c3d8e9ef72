"""Messages and turns: a user sends a message, the agent runs a turn, and all of it is kept.

:func:`engram.services.runtime.turn.run_turn` knows nothing of storage; this
service gives it the agent's state and writes back what the turn did:

* the **buffer** the model sees is a system message compiled afresh for every
  turn (prompt, core memory, tool rules, statistics; never stored) plus the
  agent's messages from ``Agent.context_start_sequence`` on, in sequence
  order.  Only the buffer is read, so a turn costs the same after a thousand
  messages as after ten; older messages stay searchable with
  ``conversation_search`` and listable with :meth:`MessageService.list_messages`;
* a **run** row exists for every turn, created (``running``) before anything
  else and closed with a status and a stop reason however the turn ends;
* after each **step** (one model call and the tools it asked for) one
  transaction stores the step's messages, a step row with the token usage,
  and the memory blocks the step changed.  A step is stored whole or not at
  all: a turn that fails half-way through a step leaves the history as it was
  after the previous step, never an assistant tool call without its result;
* before each model call the context is **compacted** when it passes 90% of
  the agent's window (and again, up to three times, when the provider still
  finds it too long): the oldest part of the buffer is summarized by the
  model, the summary is stored as a message of its own, and the buffer's start
  moves to the first message kept.  See :class:`_Compactor` for how the
  summary is found again.

One agent runs one turn at a time: an in-process lock refuses a second turn
at once, and a ``running`` run in the database refuses it when another
server process holds the agent.  The lock only works if the process keeps a
single :class:`MessageService`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Insert, Select, Table, Update, bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from engram.adapters.event_log.base import EventsExpiredError, LoggedEvent
from engram.adapters.llm.chat import ChatMessage, ChatResult, Reasoning, Role, ToolCall, ToolSpec
from engram.adapters.llm.errors import ContextWindowExceededError, ProviderError
from engram.adapters.llm.registry import LLMProvider, ModelResolver
from engram.adapters.tokens import (
    TokenCounter,
    count_message,
    count_tools,
    default_counters,
)
from engram.services.blocks import new_block
from engram.services.caller import Caller
from engram.services.common import load
from engram.services.errors import FailedPreconditionError, InvalidArgumentError
from engram.services.file_tools import FILE_TOOLS, OPEN_FILES, FileToolService, files_section_of
from engram.services.idempotency import check_request_id
from engram.services.message_search import conversation_search
from engram.services.pagination import (
    InvalidPageTokenError,
    PageRequest,
    created_key,
    cut_page,
    oldest_first,
    page_request,
)
from engram.services.passages import ARCHIVAL_TOOLS, PassageService, run_archival_tool
from engram.services.run_errors import (
    no_active_run,
    request_id_reused,
    run_already_ended,
    run_events_expired,
    run_position_unknown,
)
from engram.services.run_executor import (
    CANCELLED_BY_CLIENT,
    OWNER_LOST,
    RunControl,
    RunExecutor,
)
from engram.services.runtime.buffer_cache import BufferCache
from engram.services.runtime.compaction import (
    DEFAULT_TRIGGER_FRACTION,
    BufferEntry,
    EntryRole,
    SystemPromptTooLargeError,
    needs_compaction,
    plan_compaction,
)
from engram.services.runtime.core_memory import CoreMemory, MemoryBlockState
from engram.services.runtime.memory_prompt import (
    compile_system_message,
    render_core_memory,
    render_memory_statistics,
    render_tool_rules,
)
from engram.services.runtime.message_tokens import default_message_tokens
from engram.services.runtime.summarizer import summarize
from engram.services.runtime.tool_rule_solver import ToolRuleSolver
from engram.services.runtime.turn import (
    DEFAULT_MAX_STEPS,
    LoopContract,
    PendingDecision,
    RuntimeTool,
    StepFinished,
    StepStarted,
    StopReason,
    ToolOutcome,
    ToolRunner,
    Turn,
    TurnEvent,
    TurnFinished,
    TurnSettings,
    package_return,
    run_turn,
    time_left_for_call,
)
from engram.store.agent_reads import AgentReader, AgentRecord, agent_by_id, record_of
from engram.store.agent_state import AgentState, StoredTool, read_agent_state
from engram.store.clock import database_time
from engram.store.database import Database
from engram.store.errors import NotFoundError, OrganizationScopeError, UniqueViolationError
from engram.store.ids import IdPrefix, new_id
from engram.store.models import (
    Agent,
    AgentBlock,
    Block,
    Message,
    Run,
    Step,
)
from engram.store.models.tools import DEFAULT_RETURN_CHAR_LIMIT
from engram.store.scoping import organization_of, scoped_update
from engram.store.types import utc_now

logger = logging.getLogger(__name__)

# Run and step statuses.
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"

# Stop reasons of runs that did not end by the loop's own decision.
STOP_ERROR = "error"
STOP_LLM_API_ERROR = "llm_api_error"
STOP_SYSTEM_PROMPT_TOO_LARGE = "context_window_overflow_in_system_prompt"

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
# The ``name`` of user-role messages the runtime wrote (heartbeat and rule
# notices), which tells them apart from what the person typed.
RUNTIME_AUTHOR = "engram"

# The lease of a run started without a RunExecutor (nothing renews it: turns
# driven directly, as tests do); long enough for any turn, retries included.
UNMANAGED_LEASE = timedelta(minutes=30)
UNMANAGED_OWNER = "unmanaged"
RUN_REQUEST_CONSTRAINT = "uq_runs_organization_id_request_id"
# How long a start refused because the agent is busy looks for a concurrent
# attempt's run under the same request id (the first attempt commits its run
# in its first transaction): 40 checks, 25 ms apart.
REQUEST_RACE_CHECKS = 40
REQUEST_RACE_PAUSE_SECONDS = 0.025
# Runs a CancelRun can still stop: running, or paused on an approval request.
STOP_REQUIRES_APPROVAL = StopReason.REQUIRES_APPROVAL.value
CANCELLED_CALL_NOTICE = "Not run: the run was cancelled before this call was approved."
# How many of an agent's latest messages are read to find a paused run's calls.
PENDING_SCAN = 64
# A run that ended this recently may still be writing its last events elsewhere.
RECENTLY_ENDED = timedelta(seconds=10)

CONVERSATION_SEARCH = "conversation_search"
CUSTOM_TOOL_UNAVAILABLE = "custom tools cannot run yet on this server"
ARCHIVAL_MEMORY_UNAVAILABLE = "archival memory is not available on this server"
FILE_TOOLS_UNAVAILABLE = "file tools are not available on this server"
UNANSWERED_CALL_NOTICE = "Not run: the user sent a new message before this call was approved."

# Compaction.  The window of an agent without a context_window_limit (the
# reference's global maximum), and the time the summary call may take (the
# providers' own default for one call).
DEFAULT_CONTEXT_WINDOW = 128_000
SUMMARY_TIMEOUT_SECONDS = 300.0
# The content item that marks a stored message as a compaction summary.
SUMMARY_ITEM = "compaction_summary"
SUMMARY_HEADER = (
    "[Earlier conversation, summarized] Older messages were taken out of your context to "
    "make room and replaced by the summary below; conversation_search still finds them."
)


# --- events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStarted:
    """The first event of every turn: the run exists, under this id."""

    run_id: str


@dataclass(frozen=True)
class RunEvent:
    """One event of a turn, tagged with its run so a client can follow several."""

    run_id: str
    event: RunStarted | TurnEvent


@dataclass(frozen=True)
class TurnOptions:
    """How a turn started through :meth:`MessageService.start_message` runs."""

    stream_tokens: bool = False
    coalesce_seconds: float = 0.0
    max_steps: int = DEFAULT_MAX_STEPS
    # Bounds each model call (time.monotonic() seconds); None: unbounded.
    deadline: float | None = None
    # The client's idempotency key: a retry with it attaches to the first run.
    request_id: str = ""
    background: bool = False


@dataclass(frozen=True)
class RunView:
    """A run with the token usage of its steps, summed."""

    run: Run
    prompt_tokens: int = 0
    completion_tokens: int = 0
    step_count: int = 0


# --- the service -----------------------------------------------------------------------


class MessageService:
    """Sending messages to agents, and reading back their history, runs and steps."""

    def __init__(
        self,
        database: Database,
        providers: ModelResolver,
        *,
        compaction_trigger: float = DEFAULT_TRIGGER_FRACTION,
        archival: PassageService | None = None,
        executor: RunExecutor | None = None,
    ) -> None:
        self.database = database
        self.providers = providers
        # Runs turns in the background with their event logs and leases; without
        # one, turns can only be driven directly (send, submit_approval).
        self.executor = executor
        # Runs the archival memory tools; without it they answer that it is missing.
        self.archival = archival
        # Runs the file tools; they search with the archival passages' embeddings.
        self.files = FileToolService(database, archival) if archival is not None else None
        # Compact when the next call's context passes this fraction of the window.
        self.compaction_trigger = compaction_trigger
        # Agents with a turn in progress in this process.  Only ever try-acquired,
        # so no task waits on one and an entry can go as soon as it is released.
        self._turn_locks: dict[str, asyncio.Lock] = {}
        # The buffers this process's turns last read or wrote, so the next
        # turn of an agent reads only what is new (see buffer_cache).
        self._buffers = BufferCache()
        # The turn's first read of its agent, on the driver connection.
        self._reader: AgentReader | None = None

    # --- turns ---------------------------------------------------------------------

    async def send(
        self,
        caller: Caller,
        agent_id: str,
        text: str,
        *,
        stream_tokens: bool = False,
        coalesce_seconds: float = 0.0,
        max_steps: int = DEFAULT_MAX_STEPS,
        deadline: float | None = None,
    ) -> AsyncGenerator[RunEvent, None]:
        """Store the user's message, run one turn, and yield what happens as it happens.

        The first event is :class:`RunStarted`; the last, when the turn ends on
        its own, wraps :class:`TurnFinished` and is yielded only once the turn
        is fully stored.  Errors before the run exists (unknown agent, no
        model, provider not configured, agent busy) raise on the first
        iteration and leave no run behind; later ones close the run as failed
        (or cancelled) and are raised again.  Closing the generator early, or
        cancelling the task reading it, cancels the turn and its run.

        With ``stream_tokens``, pieces of the model's answer are held up to
        ``coalesce_seconds`` to be merged (0 sends each piece as it comes).
        """
        turn = self._turn(
            caller,
            agent_id,
            _checked_text(text),
            stream_tokens=stream_tokens,
            coalesce_seconds=coalesce_seconds,
            max_steps=max_steps,
            deadline=deadline,
        )
        async with contextlib.aclosing(turn):
            async for event in turn:
                yield event

    async def submit_approval(
        self,
        caller: Caller,
        agent_id: str,
        call_id: str,
        approve: bool,
        reason: str = "",
        *,
        stream_tokens: bool = False,
        coalesce_seconds: float = 0.0,
        max_steps: int = DEFAULT_MAX_STEPS,
        deadline: float | None = None,
    ) -> AsyncGenerator[RunEvent, None]:
        """Answer the tool call the agent's last turn stopped on, and run the turn that follows.

        Like :meth:`send`, but the new run opens with the reviewed call's
        result instead of a user message: the tool's, when approved, or a
        refusal (with ``reason``) the agent then gets a step to react to.  The
        call must be an unanswered call of the agent's last assistant message
        (only a pause for approval leaves one); anything else is refused with
        NO_PENDING_APPROVAL before a run exists.
        """
        if not call_id.strip():
            raise InvalidArgumentError.field("call_id", "is required")
        review = _Review(call_id, approve, reason.replace("\x00", ""))
        turn = self._turn(
            caller,
            agent_id,
            review,
            stream_tokens=stream_tokens,
            coalesce_seconds=coalesce_seconds,
            max_steps=max_steps,
            deadline=deadline,
        )
        async with contextlib.aclosing(turn):
            async for event in turn:
                yield event

    # --- durable runs ------------------------------------------------------------------

    async def start_message(
        self, caller: Caller, agent_id: str, text: str, options: TurnOptions
    ) -> str:
        """Store the user's message and start its run in the background; returns the run id.

        The run goes on whatever the caller does next; its events go to its
        log (:meth:`follow`).  With ``options.request_id``, a retry attaches to
        the run the first attempt started and starts nothing.  Refusals
        (unknown agent, no model, agent busy, server draining) raise here and
        leave no run behind.
        """
        return await self._start(caller, agent_id, _checked_text(text), options)

    async def start_approval(
        self,
        caller: Caller,
        agent_id: str,
        call_id: str,
        approve: bool,
        reason: str,
        options: TurnOptions,
    ) -> str:
        """Answer the pending approval and start the continued turn in the background."""
        if not call_id.strip():
            raise InvalidArgumentError.field("call_id", "is required")
        review = _Review(call_id, approve, reason.replace("\x00", ""))
        return await self._start(caller, agent_id, review, options)

    async def _start(
        self, caller: Caller, agent_id: str, opening: _Opening, options: TurnOptions
    ) -> str:
        executor = self._executor()
        check_request_id(options.request_id)
        if options.request_id:
            existing = await self._run_of_request(caller, agent_id, options.request_id)
            if existing is not None:
                return existing
        executor.check_accepting()
        control = RunControl()
        turn = self._turn(
            caller,
            agent_id,
            opening,
            stream_tokens=options.stream_tokens,
            coalesce_seconds=options.coalesce_seconds,
            max_steps=options.max_steps,
            deadline=options.deadline,
            control=control,
            request_id=options.request_id,
            background=options.background,
        )
        try:
            started = await anext(turn)  # the run exists once this returns
        except (UniqueViolationError, FailedPreconditionError) as error:
            await turn.aclose()
            if not options.request_id or not _lost_to_same_request(error):
                raise
            # A concurrent attempt with the same request id got there first: it
            # holds the agent, and its run is committed at once or very soon.
            existing = await self._await_run_of_request(caller, agent_id, options.request_id)
            if existing is None:
                raise
            return existing
        except BaseException:
            await turn.aclose()
            raise
        executor.launch(caller.organization_id, started.run_id, control, turn)
        return started.run_id

    async def _run_of_request(self, caller: Caller, agent_id: str, request_id: str) -> str | None:
        """The run an earlier attempt with ``request_id`` started, if any (of this agent only)."""
        async with self.database.read(caller.organization_id) as session:
            found = (
                await session.execute(
                    select(Run.id, Run.agent_id).where(Run.request_id == request_id)
                )
            ).one_or_none()
        if found is None:
            return None
        if found.agent_id != agent_id:
            raise request_id_reused(agent_id)
        return str(found.id)

    async def _await_run_of_request(
        self, caller: Caller, agent_id: str, request_id: str
    ) -> str | None:
        """The run of ``request_id``, waiting briefly for a concurrent attempt to commit it."""
        for _ in range(REQUEST_RACE_CHECKS):
            existing = await self._run_of_request(caller, agent_id, request_id)
            if existing is not None:
                return existing
            await asyncio.sleep(REQUEST_RACE_PAUSE_SECONDS)
        return None

    def _executor(self) -> RunExecutor:
        if self.executor is None:
            raise RuntimeError("this MessageService has no RunExecutor to run turns with")
        return self.executor

    async def follow(
        self,
        caller: Caller,
        run_id: str,
        after: int,
        *,
        idle_seconds: float,
        started: bool = False,
    ) -> AsyncIterator[LoggedEvent | None]:
        """The run's events after ``after``: those written, then each new one, to its last.

        Yields None after ``idle_seconds`` without an event (the caller sends a
        keepalive).  Positions no longer kept, or never sent, are refused
        before anything is yielded.  A run that ended without its log being
        closed (its server died before it could) gets its ending written here.
        ``started`` says the caller has just started (or attached to) the run
        through :meth:`start_message`, which checked it is theirs: its row need
        not be read again when the log has its events.
        """
        executor = self._executor()
        log = executor.log
        if not started:
            await self._run_row(caller, run_id)  # the caller's own run, or NOT_FOUND
        bounds = await log.bounds(run_id)
        if bounds is None:
            local = executor.is_local(run_id)
            if not local and not _events_may_come(
                await self._run_row(caller, run_id), executor.events.kind
            ):
                raise run_events_expired(run_id)
            if after > 0:
                raise run_position_unknown(run_id, after, 0)
        else:
            if after > bounds.last:
                raise run_position_unknown(run_id, after, bounds.last)
            if after + 1 < bounds.first:
                raise run_events_expired(run_id, bounds.first)
            if bounds.final and after == bounds.last:
                return
        quiet = 0
        try:
            async for event in log.read(run_id, after, idle_seconds=idle_seconds):
                if event is not None:
                    quiet = 0
                    yield event
                    continue
                quiet += 1
                if quiet >= 2:
                    await self._close_if_ended(caller, run_id)
                yield None
        except EventsExpiredError as error:
            raise run_events_expired(run_id) from error

    async def _close_if_ended(self, caller: Caller, run_id: str) -> None:
        """Write the ending of a run that ended in the database but not in its log."""
        executor = self._executor()
        if executor.is_local(run_id):
            return
        run = await self._run_row(caller, run_id)
        if run.status != RUNNING:
            await executor.close_log(caller.organization_id, run_id, run.stop_reason or "error")

    async def _run_row(self, caller: Caller, run_id: str) -> Run:
        async with self.database.read(caller.organization_id) as session:
            return await load(session, Run, run_id, "run")

    async def cancel_run(self, caller: Caller, run_id: str, *, wait_seconds: float) -> RunView:
        """Cancel a run wherever it runs; returns it once stopped (or after ``wait_seconds``).

        A running run is flagged (and its owner signalled) and stops at its
        next safe point.  A run paused on an approval request is closed here,
        with a refusal stored for each call still waiting, so the agent is
        never left with an unanswered call.
        """
        executor = self._executor()

        async def work(session: AsyncSession) -> bool:
            run = await load(session, Run, run_id, "run", lock=True)
            if run.status == RUNNING:
                if run.cancel_requested_at is None:
                    run.cancel_requested_at = utc_now()
                return True
            if not await _refuse_pending_calls(session, run):
                raise run_already_ended(run_id, run.status)
            return False

        running = await self.database.run_transaction(work, caller.organization_id)
        if running:
            await executor.request_cancel(run_id)
            await self._wait_for_end(caller, run_id, wait_seconds)
        return await self.get_run(caller, run_id)

    async def cancel_turn(self, caller: Caller, agent_id: str, *, wait_seconds: float) -> RunView:
        """Cancel the agent's running run, or the run waiting on its approval."""
        async with self.database.read(caller.organization_id) as session:
            await load(session, Agent, agent_id, "agent")
            latest = await session.scalar(
                select(Run)
                .where(
                    Run.agent_id == agent_id,
                    or_(Run.status == RUNNING, Run.stop_reason == STOP_REQUIRES_APPROVAL),
                )
                .order_by(Run.created_at.desc(), Run.id.desc())
                .limit(1)
            )
        if latest is None:
            raise no_active_run(agent_id)
        try:
            return await self.cancel_run(caller, latest.id, wait_seconds=wait_seconds)
        except FailedPreconditionError as error:
            if error.reason == "RUN_ALREADY_ENDED":
                raise no_active_run(agent_id) from error
            raise

    async def _wait_for_end(self, caller: Caller, run_id: str, wait_seconds: float) -> None:
        """Follow the run's log from its newest event to its last, for at most ``wait_seconds``."""
        bounds = await self._executor().log.bounds(run_id)
        after = bounds.last if bounds is not None else 0
        with contextlib.suppress(TimeoutError, FailedPreconditionError):
            async with asyncio.timeout(wait_seconds):
                async for _ in self.follow(caller, run_id, after, idle_seconds=1.0):
                    pass

    async def _turn(
        self,
        caller: Caller,
        agent_id: str,
        opening: _Opening,
        *,
        stream_tokens: bool,
        max_steps: int,
        coalesce_seconds: float = 0.0,
        deadline: float | None = None,
        control: RunControl | None = None,
        request_id: str = "",
        background: bool = False,
    ) -> AsyncGenerator[RunEvent, None]:
        """Claim the agent, start a run, and run the turn that ``opening`` starts.

        ``deadline`` (``time.monotonic()`` seconds) bounds every provider call.
        ``control`` is how a :class:`RunExecutor` stops the turn.
        """
        if max_steps < 1:
            raise InvalidArgumentError.field("max_steps", "must be at least 1")
        agent = await self._agent(caller, agent_id)
        provider, model = await self._provider_for(caller.organization_id, agent)
        settings = TurnSettings(
            model=model,
            contract=_contract(agent),
            max_steps=max_steps,
            stream_tokens=stream_tokens,
            coalesce_seconds=coalesce_seconds,
            deadline=deadline,
            **_model_settings(agent.model_settings),
        )
        async with self._claim(agent_id):
            start = await self._start_run(caller, agent_id, opening, request_id, background)
            recorder = _TurnRecorder(
                self.database,
                caller.organization_id,
                agent_id,
                start.run_id,
                provider.name,
                self._buffers,
            )
            turn_events = self._turn_events(
                caller, recorder, start, provider, settings, control or RunControl()
            )
            async with contextlib.aclosing(turn_events):
                async for event in turn_events:
                    yield event

    async def _agent(self, caller: Caller, agent_id: str) -> AgentRecord:
        """The agent's columns, read below the ORM (see :mod:`engram.store.agent_reads`).

        Read before the turn is claimed, to pick the provider: an error there
        leaves no run behind.
        """
        row: Sequence[Any] | None
        try:
            row = await self._agent_reader().fetch(caller.organization_id, agent_id)
        except Exception:
            # A failure below the ORM (a connection lost since its last use) is
            # retried once through a session, which reconnects and translates
            # database errors into store errors.
            async with self.database.read(caller.organization_id) as session:
                row = (
                    await session.execute(_agent_read(lock=False), {"agent_id": agent_id})
                ).first()
        if row is None:
            raise NotFoundError("agent", agent_id)
        return record_of(row)

    def _agent_reader(self) -> AgentReader:
        if self._reader is None:
            self._reader = AgentReader(_AGENT_READ_EXTRA, self.database.pinned)
        return self._reader

    async def _provider_for(
        self, organization_id: str, agent: AgentRecord
    ) -> tuple[LLMProvider, str]:
        if not agent.model:
            raise FailedPreconditionError(
                f"agents/{agent.id} has no model; set one (provider/model) before sending",
                subject=f"agents/{agent.id}",
                violation_type="AGENT_HAS_NO_MODEL",
            )
        # The organization's own providers first, then the environment's.
        return await self.providers.resolve_model(organization_id, agent.model)

    @contextlib.asynccontextmanager
    async def _claim(self, agent_id: str) -> AsyncIterator[None]:
        """Hold the agent's in-process turn lock, or refuse at once if a turn holds it."""
        lock = self._turn_locks.setdefault(agent_id, asyncio.Lock())
        if lock.locked():
            raise _busy(agent_id)
        try:
            async with lock:
                yield
        finally:
            if self._turn_locks.get(agent_id) is lock and not lock.locked():
                del self._turn_locks[agent_id]

    async def _start_run(
        self,
        caller: Caller,
        agent_id: str,
        opening: _Opening,
        request_id: str = "",
        background: bool = False,
    ) -> _RunStart:
        """Create the turn's run, unless another process is running a turn on the agent.

        The agent row is locked first, so two processes cannot both find no
        running run and both start one.  A review is checked in the same
        transaction (and comes back with where its call is stored), so a
        refused one leaves no run behind.  The same transaction reads the
        agent's context (the locked row is the agent it describes) and stores
        the user's message: one transaction, not three, before the first step.
        A review stores nothing here: the loop answers the reviewed call
        itself, and the call's result is stored with the first checkpoint.
        """

        lost: list[str] = []

        async def work(session: AsyncSession) -> _RunStart:
            agent, state, lost[:] = await _lock_agent(session, agent_id)
            recall = state.last_sequence
            review = None
            if isinstance(opening, _Review):
                review = await _locate_pending_call(session, agent_id, opening)
            context = await _read_context(
                session,
                agent,
                state,
                keep_from=review.sequence if review is not None else None,
                buffers=self._buffers,
            )
            run_id = new_id(IdPrefix.RUN)
            values = {
                "agent_id": agent_id,
                "status": RUNNING,
                "background": background,
                "request_id": request_id or None,
                "metadata_": {},
                **self._lease_columns(),
            }
            await _insert(session, Run, [{"id": run_id, **values}])
            if review is not None:
                resume = _pending_decision(agent_id, context.buffer, review)
                return _RunStart(run_id, context, [], resume)
            opened = [
                *_close_unanswered_calls(context.buffer),
                ChatMessage(Role.USER, str(opening)),
            ]
            rows = await _add_messages(
                session, agent_id, run_id, None, opened, after=recall, notices=False
            )
            context.system.recall_messages += len(opened)
            return _RunStart(run_id, context, opened, None, [_chat_message(r) for r in rows])

        start = await self.database.run_transaction(work, caller.organization_id)
        if self.executor is not None and lost:
            # Closed as lost above; their followers need an ending, written in the
            # background so nothing can fail between this commit and the launch.
            self.executor.close_logs_soon(caller.organization_id, lost, OWNER_LOST.stop_reason)
        context = start.context
        self._buffers.store(
            (caller.organization_id, agent_id),
            context.buffer_start,
            context.system.recall_messages,
            [*context.buffer, *start.stored],
        )
        return start

    def _lease_columns(self) -> dict[str, Any]:
        if self.executor is not None:
            return self.executor.lease_columns()
        return {"lease_owner": UNMANAGED_OWNER, "lease_expires_at": utc_now() + UNMANAGED_LEASE}

    async def _turn_events(
        self,
        caller: Caller,
        recorder: _TurnRecorder,
        start: _RunStart,
        provider: LLMProvider,
        settings: TurnSettings,
        control: RunControl,
    ) -> AsyncGenerator[RunEvent, None]:
        """Everything after the run exists; whatever goes wrong closes the run."""
        run_id = recorder.run_id
        try:
            yield RunEvent(run_id, RunStarted(run_id))
            turn = self._prepare_turn(caller, recorder, start, provider, settings)
            turn.cancelled = lambda: control.cancel_requested
            # run_turn is an async generator; closing it ends the model call it is in.
            loop_events = cast(AsyncGenerator[TurnEvent, None], run_turn(turn))
            async with contextlib.aclosing(loop_events) as events:
                async for event in events:
                    if isinstance(event, StepFinished | TurnFinished):
                        # The model has answered: from here on the step's results are
                        # run and stored, which an interruption could leave half-done.
                        control.interruptible = False
                    await recorder.observe(event)
                    if isinstance(event, StepStarted):
                        # The previous step is stored; the next waits for the model.
                        control.interruptible = True
                        if control.cancel_requested:
                            # Asked while the previous step was being stored (the loop
                            # had already passed its check): stop before the model call,
                            # as an interruption would.
                            control.stop_cause = control.stop_cause or CANCELLED_BY_CLIENT
                            raise asyncio.CancelledError
                    yield RunEvent(run_id, event)
        except SystemPromptTooLargeError as error:
            await recorder.abort(FAILED, STOP_SYSTEM_PROMPT_TOO_LARGE, str(error))
            raise _system_prompt_too_large(recorder.agent_id, error) from error
        except ContextWindowExceededError as error:
            # Too long even after compacting (or with nothing left to compact): the
            # provider did its job, so this is not an LLM API error.
            await recorder.abort(FAILED, STOP_ERROR, str(error))
            raise
        except ProviderError as error:
            await recorder.abort(FAILED, STOP_LLM_API_ERROR, str(error))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # Stopped (by the executor, or a direct caller that went away); record
            # that even while being cancelled.
            cause = control.stop_cause or CANCELLED_BY_CLIENT
            await asyncio.shield(recorder.abort(cause.status, cause.stop_reason, cause.error))
            raise
        except Exception as error:
            await recorder.abort(FAILED, STOP_ERROR, str(error) or type(error).__name__)
            raise

    def _prepare_turn(
        self,
        caller: Caller,
        recorder: _TurnRecorder,
        start: _RunStart,
        provider: LLMProvider,
        settings: TurnSettings,
    ) -> Turn:
        """Build the turn from what the run's start read and stored."""
        context, opened = start.context, start.opened
        compactor = _Compactor(
            self.database,
            caller.organization_id,
            recorder.agent_id,
            recorder.run_id,
            provider,
            settings.model,
            context,
            self.compaction_trigger,
        )
        turn = Turn(
            settings=settings,
            provider=provider,
            tools=context.tools,
            memory=context.memory,
            solver=context.solver,
            run_tool=self._tool_runner(caller.organization_id, recorder),
            history=[
                context.system.compile(context.memory),
                *context.buffer,
                *opened,
            ],
            before_step=compactor.before_step,
            on_context_overflow=compactor.on_overflow,
            resume=start.resume,
            # Ids the store accepts, so a streamed piece names the message as stored.
            new_message_id=lambda: new_id(IdPrefix.MESSAGE),
        )
        recorder.attach(turn, context)
        return turn

    def _tool_runner(self, organization_id: str, recorder: _TurnRecorder) -> ToolRunner:
        """Runs the tools the loop does not run itself: search now, custom tools later."""

        async def run_tool(name: str, arguments: Mapping[str, Any]) -> ToolOutcome:
            if name == CONVERSATION_SEARCH:
                return await conversation_search(
                    self.database, organization_id, recorder.agent_id, recorder.run_id, arguments
                )
            if name in ARCHIVAL_TOOLS:
                if self.archival is None:
                    return ToolOutcome(ARCHIVAL_MEMORY_UNAVAILABLE, ok=False)
                return await run_archival_tool(
                    self.archival, organization_id, recorder.agent_id, name, arguments
                )
            if name in FILE_TOOLS:
                if self.files is None:
                    return ToolOutcome(FILE_TOOLS_UNAVAILABLE, ok=False)
                outcome = await self.files.run(organization_id, recorder.agent_id, name, arguments)
                if name == OPEN_FILES and outcome.ok:
                    recorder.show_files(
                        await self.files.section(organization_id, recorder.agent_id)
                    )
                return outcome
            return ToolOutcome(CUSTOM_TOOL_UNAVAILABLE, ok=False)

        return run_tool

    # --- history -----------------------------------------------------------------------

    async def list_messages(
        self,
        caller: Caller,
        agent_id: str,
        *,
        page_size: int,
        page_token: str,
        newest_first: bool = False,
        roles: Sequence[str] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> tuple[list[Message], str]:
        """The agent's whole history (not just the buffer), by sequence.

        Optionally only some roles, and only messages written in
        ``[start_time, end_time)``.
        """
        wanted = _checked_roles(roles)
        if start_time is not None and end_time is not None and end_time <= start_time:
            raise InvalidArgumentError.field("end_time", "must be after start_time")
        page = page_request(
            page_size,
            page_token,
            {
                "agent": agent_id,
                "newest_first": newest_first,
                "roles": wanted,
                "start": start_time.isoformat() if start_time else "",
                "end": end_time.isoformat() if end_time else "",
            },
        )
        query = select(Message).where(Message.agent_id == agent_id)
        if wanted:
            query = query.where(Message.role.in_(wanted))
        query = _created_between(query, Message, start_time, end_time)
        query = _by_sequence(query, page, newest_first=newest_first)
        async with self.database.read(caller.organization_id) as session:
            await load(session, Agent, agent_id, "agent")
            rows = (await session.scalars(query)).all()
        return cut_page(rows, page, lambda message: (message.sequence_id,))

    async def context_window(self, caller: Caller, agent_id: str) -> ContextOverview:
        """What the agent's next model call would carry, section by section, in tokens.

        Counted with the agent's model's tokenizer when it is an OpenAI model,
        by the calibrated estimate otherwise (see :mod:`engram.adapters.tokens`).
        """
        context = await _load_context(self.database, caller.organization_id, agent_id)
        counter = await default_counters().for_model(context.model)
        system = context.system
        statistics = render_memory_statistics(
            recall_messages=system.recall_messages,
            archival_passages=system.archival_passages,
            last_memory_change=system.last_memory_change,
        )
        buffer = context.buffer
        summary = buffer[:1] if buffer and _is_summary_message(buffer[0]) else []
        messages = buffer[len(summary) :]

        def overview() -> ContextOverview:  # counting a long buffer is CPU work: off the loop
            count = counter.count
            return ContextOverview(
                window=context.window,
                system_prompt_tokens=count(system.prompt),
                core_memory_tokens=count(render_core_memory(context.memory)),
                tool_rules_tokens=count(render_tool_rules(system.rule_lines)),
                memory_statistics_tokens=count(statistics),
                files_tokens=count(system.files),
                summary_tokens=sum(count_message(counter, m) for m in summary),
                messages_tokens=sum(count_message(counter, m) for m in messages),
                tool_definitions_tokens=count_tools(counter, _specs(context.tools)),
                message_count=len(messages),
                system_message=system.compile(context.memory).content,
            )

        return await asyncio.to_thread(overview)

    async def reset_messages(self, caller: Caller, agent_id: str) -> None:
        """Empty the agent's buffer; the history stays stored and searchable.

        The start of the buffer moves past the last message.  The system
        message needs no keeping: it is compiled for every turn.  The agent's
        etag does not change, since none of its settings did.  Refused while
        a turn runs, which would otherwise refill the buffer it just emptied.
        """

        async def work(session: AsyncSession) -> None:
            agent = await load(session, Agent, agent_id, "agent", lock=True)
            if agent_id in self._turn_locks:
                raise _busy(agent_id)
            await _refuse_if_running(session, agent_id)
            start = max(agent.context_start_sequence, await _last_sequence(session, agent_id) + 1)
            await session.execute(
                update(Agent)
                .where(Agent.id == agent_id)
                .values(context_start_sequence=start)
                .execution_options(synchronize_session=False)
            )

        await self.database.run_transaction(work, caller.organization_id)

    async def compact(self, caller: Caller, agent_id: str) -> bool:
        """Fold the oldest part of the agent's buffer into a summary now, whatever its size.

        What a turn does by itself when its context nears the window, done on
        demand (the reference's "summarize" call): at least the plan's first
        fraction of the buffer goes, a pending approval and what follows it
        stay.  Refused while a turn runs.  Returns whether anything was folded
        (an empty buffer has nothing to fold).
        """
        agent = await self._agent(caller, agent_id)
        provider, model = await self._provider_for(caller.organization_id, agent)
        async with self._claim(agent_id):

            async def idle(session: AsyncSession) -> None:
                await _refuse_if_running(session, agent_id)

            await self.database.run_transaction(idle, caller.organization_id)
            context = await _load_context(self.database, caller.organization_id, agent_id)
            compactor = _Compactor(
                self.database, caller.organization_id, agent_id, None, provider, model, context
            )
            tools = [tool.spec for tool in context.tools]
            try:
                buffer = await compactor.compact(context.system.compile(context.memory), tools)
            except SystemPromptTooLargeError as error:
                raise _system_prompt_too_large(agent_id, error) from error
        return buffer is not None

    # --- runs and steps ----------------------------------------------------------------

    async def get_run(self, caller: Caller, run_id: str) -> RunView:
        async with self.database.read(caller.organization_id) as session:
            run = await load(session, Run, run_id, "run")
            return (await _run_views(session, [run]))[0]

    async def list_runs(
        self,
        caller: Caller,
        agent_id: str | None,
        page_size: int,
        page_token: str,
        *,
        statuses: Sequence[str] = (),
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> tuple[list[RunView], str]:
        """Runs, oldest first, of one agent or of the whole organization, filtered."""
        wanted = sorted(set(statuses))
        # Only the filters in use, so that tokens issued before a filter existed still work.
        filters: dict[str, Any] = {"agent": agent_id or ""}
        if wanted:
            filters["statuses"] = ",".join(wanted)
        if start_time is not None:
            filters["start"] = start_time.isoformat()
        if end_time is not None:
            filters["end"] = end_time.isoformat()
        page = page_request(page_size, page_token, filters)
        query = select(Run)
        if agent_id:
            query = query.where(Run.agent_id == agent_id)
        if wanted:
            query = query.where(Run.status.in_(wanted))
        query = _created_between(query, Run, start_time, end_time)
        async with self.database.read(caller.organization_id) as session:
            if agent_id:
                await load(session, Agent, agent_id, "agent")
            runs, token = cut_page(
                (await session.scalars(oldest_first(query, Run, page))).all(), page, created_key
            )
            return await _run_views(session, runs), token

    async def messages_of_run(self, caller: Caller, run_id: str) -> list[Message]:
        """A run's messages in sequence order, the user's (or a reviewed call's result) first."""
        async with self.database.read(caller.organization_id) as session:
            await load(session, Run, run_id, "run")
            rows = await session.scalars(
                select(Message).where(Message.run_id == run_id).order_by(Message.sequence_id)
            )
            return list(rows.all())

    async def list_steps(
        self, caller: Caller, run_id: str, page_size: int, page_token: str
    ) -> tuple[list[Step], str]:
        """A run's steps in the order they ran."""
        page = page_request(page_size, page_token, {"run": run_id})
        query = oldest_first(select(Step).where(Step.run_id == run_id), Step, page)
        async with self.database.read(caller.organization_id) as session:
            await load(session, Run, run_id, "run")
            rows = (await session.scalars(query)).all()
        return cut_page(rows, page, created_key)


async def _run_views(session: AsyncSession, runs: Sequence[Run]) -> list[RunView]:
    """Runs with their usage, summed over their steps in one query for the whole page."""
    ids = [run.id for run in runs]
    usage: dict[str, tuple[int, int, int]] = {}
    if ids:
        rows = await session.execute(
            select(
                Step.run_id,
                func.sum(Step.prompt_tokens),
                func.sum(Step.completion_tokens),
                func.count(),
            )
            .where(Step.run_id.in_(ids))
            .group_by(Step.run_id)
        )
        usage = {run_id: (int(p or 0), int(c or 0), int(n)) for run_id, p, c, n in rows}
    return [RunView(run, *usage.get(run.id, (0, 0, 0))) for run in runs]


def _events_may_come(run: Run, log_kind: str) -> bool:
    """Whether a run another process runs, with no events in the log, may still get some.

    Yes when the log is shared (Redis) and the run is running, or ended so
    recently that it may still be flushing its last events; an in-process
    log never holds another process's events.
    """
    if log_kind != "redis":
        return False
    if run.status == RUNNING:
        return True
    ended = run.completed_at
    return ended is not None and utc_now() - ended < RECENTLY_ENDED


def _lost_to_same_request(error: Exception) -> bool:
    """Whether a refused start may have lost to an attempt with the same request id:
    the run insert's unique request id, or the agent busy with that attempt's turn."""
    if isinstance(error, UniqueViolationError):
        return error.constraint == RUN_REQUEST_CONSTRAINT
    return isinstance(error, FailedPreconditionError) and error.violation_type == "AGENT_BUSY"


# --- refusals --------------------------------------------------------------------------


def _busy(agent_id: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"agent {agent_id} is already running a turn; wait for it to finish",
        subject=f"agents/{agent_id}",
        violation_type="AGENT_BUSY",
    )


def _no_pending_approval(agent_id: str, call_id: str) -> FailedPreconditionError:
    return FailedPreconditionError(
        f"agents/{agent_id} has no tool call {call_id!r} waiting for approval; "
        "answer the call_id of the agent's latest approval request",
        subject=f"agents/{agent_id}",
        violation_type="NO_PENDING_APPROVAL",
    )


def _system_prompt_too_large(
    agent_id: str, error: SystemPromptTooLargeError
) -> FailedPreconditionError:
    """No compaction helps: the prompt, memory or tools must shrink, or the window grow."""
    return FailedPreconditionError(
        f"{error}; shorten the agent's system prompt, memory blocks or tools, "
        "or raise its context_window_limit",
        subject=f"agents/{agent_id}",
        violation_type="CONTEXT_WINDOW_OVERFLOW_IN_SYSTEM_PROMPT",
    )


def _checked_text(text: str) -> str:
    """The message without null bytes, which neither PostgreSQL text nor a prompt can carry."""
    clean = text.replace("\x00", "")
    if not clean.strip():
        raise InvalidArgumentError.field("text", "is required")
    return clean


def _checked_roles(roles: Sequence[str]) -> list[str]:
    wanted = sorted(set(roles))
    unknown = [role for role in wanted if role not in MESSAGE_ROLES]
    if unknown:
        raise InvalidArgumentError.field(
            "roles", f"unknown role {unknown[0]!r}; use {', '.join(MESSAGE_ROLES)}"
        )
    return wanted


async def _refuse_if_running(session: AsyncSession, agent_id: str) -> list[str]:
    """Refuse when a live run holds the agent; end (and return) runs whose lease lapsed.

    A lapsed lease means the run's process died without ending it (no lease
    at all: a run left by a server older than leases).
    """
    now = utc_now()
    # Judged on the database's clock, like the leases' sweeps (engram.store.clock).
    leased = Run.lease_expires_at > database_time(session.get_bind().dialect.name)
    running = (
        await session.execute(
            select(Run, leased)
            .where(Run.agent_id == agent_id, Run.status == RUNNING)
            .with_for_update()
        )
    ).all()
    lost = []
    for run, alive in running:
        if alive:  # NULL (no lease at all) is not alive
            raise _busy(agent_id)
        _close_run(run, OWNER_LOST.status, OWNER_LOST.stop_reason, OWNER_LOST.error, now)
        lost.append(run.id)
    return lost


def _close_run(run: Run, status: str, stop_reason: str, error: str | None, now: datetime) -> None:
    for column, value in _run_end(status, stop_reason, error, now).items():
        setattr(run, column, value)


def _run_end(status: str, stop_reason: str, error: str | None, now: datetime) -> dict[str, Any]:
    """The run's columns as a run that ended with ``status`` has them."""
    return {
        "status": status,
        "stop_reason": stop_reason,
        "error": error,
        "completed_at": now,
        "updated_at": now,
    }


async def _update_running_run(session: AsyncSession, run_id: str, **values: Any) -> None:
    """Set a running run's columns in one statement, without loading it first.

    Fails (rolling the step back) when the run is no longer running: another
    server ended it as lost while this one was cut off, and what this one
    would store now belongs to no run.
    """
    statement = _running_run_update(tuple(sorted(values)))
    parameters = {f"new_{column}": value for column, value in values.items()}
    result = await session.execute(statement, {"run_id": run_id, **parameters})
    if getattr(result, "rowcount", 1) == 0:
        raise RunTakenError(f"runs/{run_id} was ended by another server while it ran here")


@functools.cache
def _running_run_update(columns: tuple[str, ...]) -> Update:
    """The update of a running run's ``columns`` (bound as ``:new_<column>``), built once.

    Built once per set of columns (a step's, a run's end) and on the table
    (:func:`scoped_update`), so neither its cache key nor the ORM's update
    path is paid at every checkpoint.
    """
    runs = cast(Table, Run.__table__)
    return (
        scoped_update(runs)
        .where(runs.c.id == bindparam("run_id"), runs.c.status == RUNNING)
        .values({column: bindparam(f"new_{column}") for column in columns})
    )


class RunTakenError(Exception):
    """The run this turn records was ended elsewhere (its lease lapsed); stop recording."""


async def _refuse_pending_calls(session: AsyncSession, run: Run) -> bool:
    """Close a run paused on an approval as cancelled, refusing every call still waiting.

    False (nothing changed) unless ``run`` is the agent's latest run, stopped
    for approval, with calls still unanswered.
    """
    if run.stop_reason != STOP_REQUIRES_APPROVAL or run.status == CANCELLED:
        return False
    # The agent's lock first: a turn answering the approval (or a new message)
    # holds it while it starts, and once it has started this run is no longer
    # the agent's latest.
    await load(session, Agent, run.agent_id, "agent", lock=True)
    later = await session.scalar(
        select(Run.id)
        .where(
            Run.agent_id == run.agent_id,
            Run.id != run.id,
            or_(Run.status == RUNNING, Run.created_at >= run.created_at),
        )
        .limit(1)
    )
    if later is not None:
        return False
    rows = (
        await session.scalars(
            select(Message)
            .where(Message.agent_id == run.agent_id)
            .order_by(Message.sequence_id.desc())
            .limit(PENDING_SCAN)
        )
    ).all()
    if not rows or rows[0].run_id != run.id:
        return False  # a later turn has run since: nothing of this one is pending
    rows = list(reversed(rows))
    asked = next((row for row in reversed(rows) if row.role == Role.ASSISTANT.value), None)
    if asked is None:
        return False
    answered = {row.tool_call_id for row in rows if row.role == Role.TOOL.value}
    outcome = ToolOutcome(CANCELLED_CALL_NOTICE, ok=False)
    refusals = [
        ChatMessage(
            Role.TOOL,
            package_return(outcome, DEFAULT_RETURN_CHAR_LIMIT),
            tool_call_id=str(call.get("id")),
            name=str(call.get("name", "")),
        )
        for call in asked.tool_calls or ()
        if str(call.get("id")) not in answered
    ]
    if not refusals:
        return False
    last = await _last_sequence(session, run.agent_id)
    await _add_messages(session, run.agent_id, run.id, None, refusals, after=last, notices=False)
    now = utc_now()
    _close_run(run, CANCELLED, StopReason.CANCELLED.value, None, now)
    run.cancel_requested_at = now
    return True


def _run_status(stop: StopReason) -> str:
    """The run status for a turn the loop ended itself; only cancellation is not a success."""
    return CANCELLED if stop is StopReason.CANCELLED else COMPLETED


# --- the turn's inputs -----------------------------------------------------------------


def _contract(agent: AgentRecord) -> LoopContract:
    try:
        return LoopContract(agent.agent_type)
    except ValueError:
        raise FailedPreconditionError(
            f"agents/{agent.id} has the type {agent.agent_type!r}, which this server cannot run",
            subject=f"agents/{agent.id}",
            violation_type="AGENT_TYPE_UNSUPPORTED",
        ) from None


def _model_settings(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The TurnSettings fields an agent's model_settings carry (validated when stored)."""
    temperature = stored.get("temperature")
    max_tokens = stored.get("max_output_tokens")
    return {
        "temperature": float(temperature) if temperature is not None else None,
        "max_output_tokens": int(max_tokens) if max_tokens else None,
        "reasoning_effort": str(stored.get("reasoning_effort") or ""),
        "parallel_tool_calls": bool(stored.get("parallel_tool_calls", False)),
    }


@dataclass
class _SystemPrompt:
    """What the system message is compiled from; recompiled when memory changes."""

    prompt: str
    rule_lines: list[str]
    recall_messages: int
    archival_passages: int
    last_memory_change: datetime | None
    # The attached files and the open ones' lines (file_tools.files_section).
    files: str = ""

    def compile(self, memory: CoreMemory) -> ChatMessage:
        statistics = render_memory_statistics(
            recall_messages=self.recall_messages,
            archival_passages=self.archival_passages,
            last_memory_change=self.last_memory_change,
        )
        text = compile_system_message(
            self.prompt, memory, self.rule_lines, statistics, files=self.files
        )
        return ChatMessage(Role.SYSTEM, text)


@dataclass(frozen=True)
class ContextOverview:
    """The sections of an agent's context window and their estimated sizes in tokens."""

    window: int
    system_prompt_tokens: int
    core_memory_tokens: int
    tool_rules_tokens: int
    memory_statistics_tokens: int
    files_tokens: int
    summary_tokens: int
    messages_tokens: int
    tool_definitions_tokens: int
    message_count: int
    system_message: str

    @property
    def total_tokens(self) -> int:
        return (
            self.system_prompt_tokens
            + self.core_memory_tokens
            + self.tool_rules_tokens
            + self.memory_statistics_tokens
            + self.files_tokens
            + self.summary_tokens
            + self.messages_tokens
            + self.tool_definitions_tokens
        )


def _summary_timeout(deadline: float | None) -> float:
    """How long the summary call may take: its own limit, or less under a deadline."""
    left = time_left_for_call(deadline)
    return SUMMARY_TIMEOUT_SECONDS if left is None else min(SUMMARY_TIMEOUT_SECONDS, left)


def _is_summary_message(message: ChatMessage) -> bool:
    return message.role is Role.USER and message.content.startswith(SUMMARY_HEADER)


@dataclass
class _AgentContext:
    memory: CoreMemory
    tools: list[RuntimeTool]
    solver: ToolRuleSolver
    buffer: list[ChatMessage]
    system: _SystemPrompt
    window: int  # the agent's context window, in tokens
    buffer_start: int  # the sequence number the buffer was read from
    model: str  # the agent's model handle: it picks the token counter


@dataclass
class _RunStart:
    """What a turn's first transaction created and read: the run, the context, the opening."""

    run_id: str
    context: _AgentContext
    opened: list[ChatMessage]  # stored: the user's message, after any closed calls
    resume: PendingDecision | None  # the reviewed call, when the turn opens with a review
    stored: list[ChatMessage] = field(default_factory=list)  # ``opened`` as read back


async def _load_context(database: Database, organization_id: str, agent_id: str) -> _AgentContext:
    """The agent's memory, tools, rules and buffer, as its next turn would see them."""
    async with database.read(organization_id) as session:
        agent = await _read_agent(session, agent_id, lock=False)
        return await _read_context(session, agent, await read_agent_state(session, agent_id))


@dataclass(frozen=True)
class _TurnAgent:
    """The agent's columns a turn starts from."""

    record: AgentRecord
    organization_id: str
    context_start_sequence: int

    @property
    def id(self) -> str:
        return self.record.id


# What a turn reads of its agent beyond AGENT_COLUMNS: where its buffer starts.
_AGENT_READ_EXTRA = (Agent.__table__.c.context_start_sequence,)


@functools.cache
def _agent_read(*, lock: bool) -> Select[Any]:
    """The agent's columns and its buffer's start, by ``:agent_id`` (scoped); built once."""
    statement = agent_by_id(_AGENT_READ_EXTRA)
    return statement.with_for_update() if lock else statement


async def _read_agent(session: AsyncSession, agent_id: str, *, lock: bool) -> _TurnAgent:
    row = (await session.execute(_agent_read(lock=lock), {"agent_id": agent_id})).first()
    if row is None:
        raise NotFoundError("agent", agent_id)
    organization_id = organization_of(session.sync_session)
    assert organization_id is not None  # the read ran scoped
    return _TurnAgent(record_of(row), organization_id, int(row[-1]))


async def _lock_agent(
    session: AsyncSession, agent_id: str
) -> tuple[_TurnAgent, AgentState, list[str]]:
    """The agent's row, locked for the transaction, its state (last message sequence
    number, memory, tools, ...), and the runs found lost (ended here as failed;
    their logs still need an ending).

    Refused (AGENT_BUSY) when a live run holds the agent.  Once the lock is
    held, one statement reads the agent's state, including whether any of
    its runs is running; only then are the running runs read (and abandoned
    ones closed).  The state is read after the lock is granted, never in the
    locking statement itself: on PostgreSQL that statement's snapshot
    predates the wait, and would miss what the previous holder of the lock
    committed.
    """
    agent = await _read_agent(session, agent_id, lock=True)
    state = await read_agent_state(session, agent_id)
    lost = await _refuse_if_running(session, agent_id) if state.running else []
    return agent, state, lost


async def _read_context(
    session: AsyncSession,
    agent: _TurnAgent,
    state: AgentState,
    *,
    keep_from: int | None = None,
    buffers: BufferCache | None = None,
) -> _AgentContext:
    """The agent's memory, tools, rules and buffer, read once at the start of a turn.

    ``state`` is what :func:`read_agent_state` read.  ``keep_from`` (the
    sequence of a call being reviewed) widens the buffer to include it, so
    its result never reaches the model without the call.  With ``buffers``,
    only the part of the buffer not kept there is read.
    """
    record, recall = agent.record, state.last_sequence
    # An agent that clears its buffer starts each turn from the turn's own messages.
    start = recall + 1 if record.message_buffer_autoclear else agent.context_start_sequence
    if keep_from is not None:
        start = min(start, keep_from)
    buffer = await _read_buffer(session, agent, start, recall, buffers)
    solver = ToolRuleSolver.from_rules([*record.tool_rules, *_approval_rules(state.tools)])
    return _AgentContext(
        memory=CoreMemory(MemoryBlockState.of(block) for block in state.blocks),
        tools=[_runtime_tool(tool) for tool in state.tools],
        solver=solver,
        buffer=buffer,
        system=_SystemPrompt(
            prompt=record.system,
            rule_lines=solver.rule_prompts(),
            # Sequence numbers count the messages (none are deleted one by one), and
            # reading the highest one is an index lookup where COUNT(*) is a scan.
            recall_messages=recall,
            archival_passages=state.passages,
            last_memory_change=state.last_memory_change,
            files=await files_section_of(session, agent.id, state.files),
        ),
        window=record.context_window_limit or DEFAULT_CONTEXT_WINDOW,
        buffer_start=start,
        model=record.model or "",
    )


async def _read_buffer(
    session: AsyncSession, agent: _TurnAgent, start: int, recall: int, buffers: BufferCache | None
) -> list[ChatMessage]:
    """The buffer from sequence ``start`` on: what ``buffers`` keeps of it, plus what is newer.

    Nothing is read when the kept buffer is up to date (the agent's last turn
    ran in this process); a summary among the newer messages (a compaction
    elsewhere) means the buffer is read whole.
    """
    kept = buffers.lookup((agent.organization_id, agent.id), start, recall) if buffers else None
    if kept is not None:
        messages, known = kept
        if known == recall:
            return messages
        newer = (
            await session.scalars(
                select(Message)
                .where(Message.agent_id == agent.id, Message.sequence_id > known)
                .order_by(Message.sequence_id)
            )
        ).all()
        if not any(_is_summary(row) for row in newer):
            return [*messages, *(_chat_message(row) for row in newer)]
    return [_chat_message(row) for row in await _buffer_rows(session, agent.id, start)]


async def _buffer_rows(session: AsyncSession, agent_id: str, start: int) -> list[Message]:
    """The agent's buffer from sequence ``start`` on, its newest summary first.

    A summary is stored after the messages it keeps (sequence numbers only
    grow), so it is moved to the front; older summaries still in the range
    were folded into the newest and are left out.
    """
    rows = (
        await session.scalars(
            select(Message)
            .where(Message.agent_id == agent_id, Message.sequence_id >= start)
            .order_by(Message.sequence_id)
        )
    ).all()
    summaries = [row for row in rows if _is_summary(row)]
    rest = [row for row in rows if not _is_summary(row)]
    return [summaries[-1], *rest] if summaries else rest


async def _last_sequence(session: AsyncSession, agent_id: str) -> int:
    """The agent's highest message sequence number; 0 before its first message."""
    last = await session.scalar(
        select(func.max(Message.sequence_id)).where(Message.agent_id == agent_id)
    )
    return int(last or 0)


def _runtime_tool(tool: StoredTool) -> RuntimeTool:
    """The tool as the model is offered it, from its stored JSON schema."""
    schema = tool.json_schema or {}
    parameters = schema.get("parameters") or {"type": "object", "properties": {}}
    spec = ToolSpec(
        name=str(schema.get("name") or tool.name),
        description=str(schema.get("description") or tool.description),
        parameters=parameters,
    )
    return RuntimeTool(spec, return_char_limit=tool.return_char_limit)


def _approval_rules(tools: Sequence[StoredTool]) -> list[dict[str, Any]]:
    """A tool marked as needing approval by default needs it on every agent."""
    return [
        {"requires_approval": {"tool_name": tool.name}}
        for tool in tools
        if tool.default_requires_approval
    ]


def _close_unanswered_calls(buffer: Sequence[ChatMessage]) -> list[ChatMessage]:
    """Results for tool calls left without one (a turn that paused for approval).

    Providers refuse a history in which a tool call has no result, so a new
    message from the user answers the pending calls as not run.  Only the
    last assistant message can have any: steps are stored whole.
    """
    last = next(
        (index for index in range(len(buffer) - 1, -1, -1) if buffer[index].role is Role.ASSISTANT),
        None,
    )
    if last is None:
        return []
    answered = {m.tool_call_id for m in buffer[last + 1 :] if m.role is Role.TOOL}
    outcome = ToolOutcome(UNANSWERED_CALL_NOTICE, ok=False)
    return [
        ChatMessage(
            Role.TOOL,
            package_return(outcome, DEFAULT_RETURN_CHAR_LIMIT),
            tool_call_id=call.id,
            name=call.name,
        )
        for call in buffer[last].tool_calls
        if call.id not in answered
    ]


@dataclass(frozen=True)
class _Review:
    """A client's answer to an approval request: what opens a turn instead of a message.

    ``sequence`` is where the reviewed call is stored, found when the run starts.
    """

    call_id: str
    approve: bool
    reason: str
    sequence: int = 0


# What a turn opens with: the user's text, or the review of a paused call.
_Opening = str | _Review


async def _locate_pending_call(session: AsyncSession, agent_id: str, review: _Review) -> _Review:
    """The review with its call's sequence; NO_PENDING_APPROVAL unless the call awaits one.

    Only a pause for approval leaves a call without a result, and only in the
    agent's last assistant message (steps are stored whole).
    """
    last = await session.scalar(
        select(Message)
        .where(Message.agent_id == agent_id, Message.role == Role.ASSISTANT.value)
        .order_by(Message.sequence_id.desc())
        .limit(1)
    )
    calls = {str(call.get("id")) for call in (last.tool_calls or ())} if last else set()
    if last is None or review.call_id not in calls:
        raise _no_pending_approval(agent_id, review.call_id)
    answered = await session.scalar(
        select(func.count())
        .select_from(Message)
        .where(
            Message.agent_id == agent_id,
            Message.role == Role.TOOL.value,
            Message.sequence_id > last.sequence_id,
            Message.tool_call_id == review.call_id,
        )
    )
    if answered:
        raise _no_pending_approval(agent_id, review.call_id)
    return replace(review, sequence=last.sequence_id)


def _pending_decision(
    agent_id: str, buffer: Sequence[ChatMessage], review: _Review
) -> PendingDecision:
    """The reviewed call as the loop resumes with it, read from the buffer it will answer."""
    assistant = next((m for m in reversed(buffer) if m.role is Role.ASSISTANT), None)
    answered = {m.tool_call_id for m in buffer if m.role is Role.TOOL}
    calls = assistant.tool_calls if assistant is not None else ()
    call = next((c for c in calls if c.id == review.call_id), None)
    if call is None or call.id in answered:
        # Checked when the run started; only a compaction in between could hide it.
        raise _no_pending_approval(agent_id, review.call_id)
    assert assistant is not None  # it holds the call
    return PendingDecision(call, review.approve, review.reason, message_id=assistant.id)


# --- stored messages <-> chat messages -------------------------------------------------


def _message_row(message: ChatMessage, *, runtime_notice: bool) -> Message:
    """The stored form of a message the turn produced (ids and sequence filled in later)."""
    if message.role is Role.ASSISTANT:
        return _assistant_row(message)
    if message.role is Role.TOOL:
        status, result = _unpack_return(message.content)
        return Message(
            role=Role.TOOL.value,
            content=[{"type": "text", "text": message.content}],
            text=result,
            name=message.name or None,
            tool_calls=None,  # every row sets the same columns, so a step's rows insert at once
            tool_call_id=message.tool_call_id or None,
            is_error=status == "error",
        )
    return Message(
        role=message.role.value,
        content=[{"type": "text", "text": message.content}],
        text=message.content,
        name=RUNTIME_AUTHOR if runtime_notice else None,
        tool_calls=None,
        tool_call_id=None,
        is_error=False,
    )


def _assistant_row(message: ChatMessage) -> Message:
    content: list[dict[str, Any]] = []
    if message.reasoning is not None:
        item = {
            "type": "reasoning",
            "text": message.reasoning.text,
            "signature": message.reasoning.signature,
        }
        if message.reasoning.redacted:
            item["redacted"] = message.reasoning.redacted
        content.append(item)
    if message.content:
        content.append({"type": "text", "text": message.content})
    calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls]
    return Message(
        role=Role.ASSISTANT.value,
        content=content,
        text=_assistant_text(message),
        name=None,
        tool_calls=calls or None,
        tool_call_id=None,
        is_error=False,
    )


def _assistant_text(message: ChatMessage) -> str:
    """What the assistant said, for search: its text and what it sent with send_message."""
    parts = [message.content] if message.content else []
    for call in message.tool_calls:
        if call.name != "send_message":
            continue
        try:
            said = call.parsed_arguments().get("message")
        except ValueError:
            continue
        if isinstance(said, str):
            parts.append(said)
    return "\n".join(parts)


def _unpack_return(packaged: str) -> tuple[str, str]:
    """The status and the result text of a packaged tool return."""
    try:
        value = json.loads(packaged)
    except ValueError:
        return "ok", packaged
    if not isinstance(value, dict):
        return "ok", packaged
    return str(value.get("status", "ok")), str(value.get("result", packaged))


def _chat_message(row: Message) -> ChatMessage:
    """A stored message as it goes back to the model."""
    items = row.content or []
    text = "".join(str(i.get("text", "")) for i in items if i.get("type") == "text")
    role = Role(row.role)
    if role is Role.TOOL:
        return ChatMessage(
            role, text, tool_call_id=row.tool_call_id or "", name=row.name or "", id=row.id
        )
    if role is not Role.ASSISTANT:
        return ChatMessage(role, text, id=row.id)
    reasoning = next(
        (
            Reasoning(
                text=str(i.get("text", "")),
                signature=str(i.get("signature", "")),
                redacted=str(i.get("redacted", "")),
            )
            for i in items
            if i.get("type") == "reasoning"
        ),
        None,
    )
    calls = tuple(
        ToolCall(str(c["id"]), str(c["name"]), str(c.get("arguments", "")))
        for c in row.tool_calls or []
    )
    return ChatMessage(role, text, tool_calls=calls, reasoning=reasoning, id=row.id)


# --- recording a turn ------------------------------------------------------------------


@dataclass
class _StepInProgress:
    number: int
    started_at: datetime
    result: ChatResult | None = None


@dataclass
class _TurnRecorder:
    """Writes a turn down as it runs: its opening, a checkpoint per step, and its end."""

    database: Database
    organization_id: str
    agent_id: str
    run_id: str
    provider_name: str
    buffers: BufferCache | None = None  # kept up to date with each checkpoint
    finished: bool = False
    _turn: Turn | None = None
    _system: _SystemPrompt | None = None
    _context: _AgentContext | None = None
    _saved: int = 0  # how many of turn.new_messages are stored
    _step: _StepInProgress | None = None

    def attach(self, turn: Turn, context: _AgentContext) -> None:
        self._turn, self._system, self._context = turn, context.system, context

    def show_files(self, section: str) -> None:
        """Files were opened or closed: the next step's system message shows them as they are."""
        if self._turn is None or self._system is None:
            return
        self._system.files = section
        self._turn.history[0] = self._system.compile(self._turn.memory)

    async def observe(self, event: TurnEvent) -> None:
        """Checkpoint when a step is over: the next one starts, or the turn ends."""
        if isinstance(event, StepStarted):
            await self._checkpoint(None)
            self._step = _StepInProgress(event.step, utc_now())
        elif isinstance(event, StepFinished) and self._step is not None:
            self._step.result = event.result
        elif isinstance(event, TurnFinished):
            await self._checkpoint(event.stop_reason)

    async def _checkpoint(self, stop: StopReason | None) -> None:
        """One transaction: the finished step, its messages, changed memory (and the run's end).

        Written without reading anything back: the messages are numbered after
        the last one this turn knows of (``recall_messages``; no other writer
        adds messages while the agent's run is running, and the unique
        sequence per agent would refuse a clash), and the run is updated in
        place.
        """
        assert self._turn is not None and self._system is not None
        turn, step, system = self._turn, self._step, self._system
        pending = list(turn.new_messages[self._saved :])
        # Messages before the first step: the result of a reviewed call.
        if step is None and stop is None and not pending:
            return
        changed, created = turn.memory.changed_labels(), turn.memory.created_labels()
        stored: list[Message] = []

        async def work(session: AsyncSession) -> None:
            now = utc_now()
            step_id = None
            if step is not None:
                step_id = await self._add_step(session, step, COMPLETED, now)
            if pending:
                stored[:] = await _add_messages(
                    session,
                    self.agent_id,
                    self.run_id,
                    step_id,
                    pending,
                    after=system.recall_messages,
                )
            await _save_memory(session, self.agent_id, turn.memory, changed, created, now)
            if stop is None:
                await _update_running_run(session, self.run_id, updated_at=now)
            else:
                await _update_running_run(
                    session, self.run_id, **_run_end(_run_status(stop), stop.value, None, now)
                )

        await self.database.run_transaction(work, self.organization_id)
        self._keep(system.recall_messages, stored)
        self._saved += len(pending)
        self._step = None
        self.finished = stop is not None
        self._system.recall_messages += len(pending)
        turn.memory.mark_persisted()
        if changed:
            # The next step should see the memory as it now is.
            self._system.last_memory_change = utc_now()
            turn.history[0] = self._system.compile(turn.memory)

    def _keep(self, after: int, stored: Sequence[Message]) -> None:
        """Add the messages just stored to the kept buffer, as a later read would return them.

        A buffer moved by a compaction during the turn no longer matches the
        kept one's start, which the cache then forgets.
        """
        if self.buffers is None or self._context is None or not stored:
            return
        self.buffers.extend(
            (self.organization_id, self.agent_id),
            self._context.buffer_start,
            after,
            [_chat_message(row) for row in stored],
            after + len(stored),
        )

    async def abort(self, status: str, stop_reason: str, error: str | None) -> None:
        """Close the run after an error or a cancellation, with the step it interrupted.

        The interrupted step's messages are not stored: they may hold a tool
        call without its result.  A failure here is logged, never raised, so
        that the error that ended the turn is the one the caller sees.
        """
        if self.finished:
            return
        step = self._step

        async def work(session: AsyncSession) -> None:
            now = utc_now()
            run = await load(session, Run, self.run_id, "run", lock=True)
            if run.status != RUNNING:
                return  # ended elsewhere already (lost lease): that ending stands
            if step is not None:
                await self._add_step(session, step, status, now)
            _close_run(run, status, stop_reason, error, now)

        try:
            await self.database.run_transaction(work, self.organization_id)
            self.finished = True
        except Exception:
            logger.exception("could not record the end of run %s", self.run_id)

    async def _add_step(
        self, session: AsyncSession, step: _StepInProgress, status: str, now: datetime
    ) -> str:
        usage = step.result.usage if step.result is not None else None
        model = (step.result.model if step.result is not None else "") or (
            self._turn.settings.model if self._turn is not None else ""
        )
        step_id = new_id(IdPrefix.STEP)
        row = {
            "id": step_id,
            "run_id": self.run_id,
            "agent_id": self.agent_id,
            "status": status,
            "provider": self.provider_name,
            "model": model or None,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "total_tokens": usage.total_tokens if usage else 0,
            "started_at": step.started_at,
            "finished_at": now,
        }
        await _insert(session, Step, [row])
        return step_id


async def _add_messages(
    session: AsyncSession,
    agent_id: str,
    run_id: str,
    step_id: str | None,
    messages: Sequence[ChatMessage],
    *,
    after: int,
    notices: bool = True,
) -> list[Message]:
    """Append messages to the agent's history, numbered after ``after``, its last one.

    With ``notices``, user-role messages are the loop's own notices (the
    person's message is never among a step's messages) and are marked so.
    Returns the rows, flushed.
    """
    rows = []
    sequence = after
    for message in messages:
        sequence += 1
        row = _message_row(message, runtime_notice=notices and message.role is Role.USER)
        # The id is chosen by the turn when a streaming client was already shown it.
        row.id = message.id or new_id(IdPrefix.MESSAGE)
        row.agent_id, row.sequence_id = agent_id, sequence
        row.run_id, row.step_id = run_id, step_id
        rows.append(row)
    await _insert(
        session, Message, [{key: getattr(row, key) for key in _MESSAGE_KEYS} for row in rows]
    )
    return rows


# What a turn sets on the messages it stores (the rest take their defaults).
_MESSAGE_KEYS = (
    "id",
    "agent_id",
    "sequence_id",
    "role",
    "content",
    "text",
    "name",
    "tool_calls",
    "tool_call_id",
    "run_id",
    "step_id",
    "is_error",
)


async def _insert(session: AsyncSession, model: type[Any], rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows of one model in one statement, in the session's organization.

    A Core insert on the model's table, not the unit of work nor the ORM's
    bulk insert: a turn writes new rows it never reads back through the
    session, and the ORM's bookkeeping (per-object state, then the bulk
    path's per-row mapping of attributes to columns) was a large part of a
    checkpoint's CPU time.  So the organization, which a flush would fill in
    and check, is set here from the session's scope.  Every row must set the
    same columns (None is sent as NULL), so that they share one statement.
    """
    organization_id = organization_of(session.sync_session)
    if organization_id is None:
        raise OrganizationScopeError("rows were inserted in a session without an organization")
    await session.execute(
        _insert_into(model.__table__),
        [{**row, "organization_id": organization_id} for row in rows],
    )


@functools.cache
def _insert_into(table: Table) -> Insert:
    # Built once per table, so SQLAlchemy's cache key for it is computed once.
    return insert(table)


async def _save_memory(
    session: AsyncSession,
    agent_id: str,
    memory: CoreMemory,
    changed: Sequence[str],
    created: Sequence[str],
    now: datetime,
) -> None:
    """Write the changed blocks; link a new block for each label the turn created.

    A block detached while the turn ran is not written back.
    """
    if not changed:
        return
    rows = (
        await session.scalars(
            select(Block)
            .join(AgentBlock, AgentBlock.block_id == Block.id)
            .where(AgentBlock.agent_id == agent_id, AgentBlock.block_label.in_(changed))
            .with_for_update(of=Block)
        )
    ).all()
    stored = {row.label: row for row in rows}
    for label in changed:
        state = memory.get(label)
        assert state is not None
        block = stored.get(label)
        if block is not None:
            block.value, block.updated_at = state.value, now
        elif label in created:
            block = new_block({"label": label, "value": state.value, "limit": state.limit})
            session.add(block)
            await session.flush()
            session.add(AgentBlock(agent_id=agent_id, block_id=block.id, block_label=label))


# --- compaction ------------------------------------------------------------------------


@dataclass
class _Compactor:
    """Keeps an agent's buffer within its context window, by summarizing its oldest part.

    How the summary is stored: as a message of its own (role user, written by
    the runtime like its other notices, marked by a ``compaction_summary``
    content item) numbered after every message there is, while the agent's
    ``context_start_sequence`` moves to the first message kept.  The loader
    (:func:`_buffer_rows`) puts the newest summary in the range first.  So no
    column points at the summary, resetting the buffer drops it with the rest,
    and the history lists it where the compaction happened.

    Compaction runs between steps, when every message of the turn is stored,
    and reads the buffer back from the database to plan on message ids.
    """

    database: Database
    organization_id: str
    agent_id: str
    run_id: str | None  # None when compacting on demand, outside a turn
    provider: LLMProvider
    model: str
    context: _AgentContext
    trigger_fraction: float = DEFAULT_TRIGGER_FRACTION

    async def before_step(self, turn: Turn) -> None:
        """Compact first when the coming call would pass the threshold of the window."""
        counter = await default_counters().for_model(self.context.model)
        counts, specs = default_message_tokens(), _specs(turn.tools)
        # Mostly remembered counts: done in place, unless there is much new text.
        tokens = counts.count_context_inline(counter, turn.history, specs)
        if tokens is None:
            tokens = await asyncio.to_thread(counts.count_context, counter, turn.history, specs)
        if needs_compaction(tokens, self.context.window, self.trigger_fraction):
            await self._compact_turn(turn)

    async def on_overflow(self, turn: Turn) -> bool:
        """The provider found the context too long, whatever our estimate said: compact."""
        return await self._compact_turn(turn)

    async def _compact_turn(self, turn: Turn) -> bool:
        buffer = await self.compact(
            turn.history[0], _specs(turn.tools), deadline=turn.settings.deadline
        )
        if buffer is None:
            return False
        turn.history[1:] = buffer
        return True

    async def compact(
        self, system: ChatMessage, tools: Sequence[ToolSpec], *, deadline: float | None = None
    ) -> list[ChatMessage] | None:
        """Summarize what the plan evicts and store it; the new buffer, or None if unchanged.

        ``deadline`` (``time.monotonic()`` seconds) is the caller's: the
        summary call gets what is left of it, like the turn's own calls.

        Raises :class:`SystemPromptTooLargeError` when the system message and
        the tool schemas alone fill the window.
        """
        rows, last = await self._stored_buffer()
        counter = await default_counters().for_model(self.context.model)
        entries = await asyncio.to_thread(_plan_entries, counter, system, tools, rows)
        plan = plan_compaction(entries, self.context.window)
        if not plan.changes_anything:
            return None
        by_id = {row.id: row for row in rows}
        evicted = [by_id[entry] for entry in plan.evicted]
        kept = [by_id[entry] for entry in plan.kept[1:]]
        previous = _summary_body(evicted.pop(0)) if _is_summary(evicted[0]) else None
        summary = await summarize(
            self.provider,
            self.model,
            [_chat_message(row) for row in evicted],
            previous,
            _summary_timeout(deadline),
        )
        stored = await self._store(summary, kept, last)
        return [stored, *(_chat_message(row) for row in kept)]

    async def _stored_buffer(self) -> tuple[list[Message], int]:
        """The buffer as stored, and the agent's last sequence number when it was read."""
        async with self.database.read(self.organization_id) as session:
            rows = await _buffer_rows(session, self.agent_id, self.context.buffer_start)
            return rows, await _last_sequence(session, self.agent_id)

    async def _store(self, summary: str, kept: Sequence[Message], last: int) -> ChatMessage:
        """One transaction: the summary message, and the buffer's start moved to what is kept.

        The agent's etag does not change (none of its settings did).  Refused
        when messages were added since the buffer was read, or, on demand,
        when a turn has started since.
        """
        start = kept[0].sequence_id if kept else last + 1

        async def work(session: AsyncSession) -> None:
            await load(session, Agent, self.agent_id, "agent", lock=True)
            if self.run_id is None:
                await _refuse_if_running(session, self.agent_id)
            if await _last_sequence(session, self.agent_id) != last:
                raise _busy(self.agent_id)
            row = _summary_row(summary)
            row.agent_id, row.sequence_id, row.run_id = self.agent_id, last + 1, self.run_id
            session.add(row)
            await session.execute(
                update(Agent)
                .where(Agent.id == self.agent_id)
                .values(context_start_sequence=start)
                .execution_options(synchronize_session=False)
            )
            await session.flush()

        await self.database.run_transaction(work, self.organization_id)
        self.context.buffer_start = start
        self.context.system.recall_messages += 1
        return ChatMessage(Role.USER, _summary_text(summary))


def _specs(tools: Sequence[RuntimeTool]) -> list[ToolSpec]:
    return [tool.spec for tool in tools]


def _plan_entries(
    counter: TokenCounter, system: ChatMessage, tools: Sequence[ToolSpec], rows: Sequence[Message]
) -> list[BufferEntry]:
    """The buffer as the planner sees it.

    The tool schemas are counted with the system message: they go with every
    call and, like it, cannot be evicted.
    """
    waiting = _calls_awaiting_results(rows)
    system_tokens = count_message(counter, system) + count_tools(counter, tools)
    entries = [BufferEntry("system", EntryRole.SYSTEM, system_tokens)]
    for row in rows:
        role = EntryRole.SUMMARY if _is_summary(row) else EntryRole(row.role)
        tokens = count_message(counter, _chat_message(row))
        entries.append(BufferEntry(row.id, role, tokens, pending_approval=row.id in waiting))
    return entries


def _calls_awaiting_results(rows: Sequence[Message]) -> set[str]:
    """Assistant messages with a tool call the buffer holds no result for: pending approvals."""
    answered = {row.tool_call_id for row in rows if row.role == Role.TOOL.value}
    return {
        row.id
        for row in rows
        if row.role == Role.ASSISTANT.value
        and any(str(call.get("id")) not in answered for call in row.tool_calls or ())
    }


def _summary_text(summary: str) -> str:
    return f"{SUMMARY_HEADER}\n\n{summary}"


def _summary_row(summary: str) -> Message:
    """The stored form of a summary (agent, sequence and run filled in by the caller)."""
    text = _summary_text(summary)
    return Message(
        role=Role.USER.value,
        content=[{"type": "text", "text": text}, {"type": SUMMARY_ITEM}],
        text=text,
        name=RUNTIME_AUTHOR,
        is_error=False,
    )


def _is_summary(row: Message) -> bool:
    return any(item.get("type") == SUMMARY_ITEM for item in row.content or ())


def _summary_body(row: Message) -> str:
    """An earlier summary without its header, to be folded into the next one."""
    return row.text.removeprefix(SUMMARY_HEADER).strip()


# --- pagination by sequence ------------------------------------------------------------


def _created_between(
    query: Select[Any],
    model: type[Message] | type[Run],
    start: datetime | None,
    end: datetime | None,
) -> Select[Any]:
    """Only rows created at or after ``start`` and before ``end`` (either may be open)."""
    if start is not None:
        query = query.where(model.created_at >= start)
    if end is not None:
        query = query.where(model.created_at < end)
    return query


def _by_sequence(query: Select[Any], page: PageRequest, *, newest_first: bool) -> Select[Any]:
    """Keyset pagination on the agent's message sequence numbers."""
    column = Message.sequence_id
    query = query.order_by(column.desc() if newest_first else column).limit(page.size + 1)
    if page.after is None:
        return query
    if (
        len(page.after) != 1
        or isinstance(page.after[0], bool)
        or not isinstance(page.after[0], int)
    ):
        raise InvalidPageTokenError.field("page_token", "is not a token this server issued")
    last = page.after[0]
    return query.where(column < last if newest_first else column > last)
