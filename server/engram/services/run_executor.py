"""Runs that outlive their callers: executed in the background, logged, leased, cancellable.

A turn used to live inside the RPC that started it; now the RPC only starts
it and then follows its log.  The :class:`RunExecutor` of each server process
owns the turns running there:

* it drives each turn's events into the run's **event log** (Redis, or the
  process's memory), numbered once (:mod:`run_events`), so a stream can drop
  and resume on any replica;
* it holds a **lease** on each of its runs and renews them all in one
  statement every third of the lease; a running run whose lease lapsed
  belongs to a process that died, and the sweep that every process runs
  ends it as failed (``owner_lost``) and closes its log, so nothing stays
  "running" forever and every follower's stream ends;
* it **cancels** a run when asked from any replica (a cancellation signal,
  and the run's ``cancel_requested_at`` read at each renewal in case the
  signal was missed): at once while the model is answering (nothing of that
  step is stored yet), else once the step's tools are done;
* at shutdown it **drains**: runs get the grace period to finish, and the
  rest end as ``interrupted`` with their logs closed.

Log writes are fenced twice: the log refuses events numbered at or below its
last one (the sweep that closed a run appends after the owner's last event),
and a turn's checkpoints only update a run that is still ``running``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update

from engram.adapters.event_log.base import EventLogConflictError, RunEventLog
from engram.adapters.event_log.factory import EventLogBackend
from engram.adapters.event_log.writer import RunEventWriter
from engram.adapters.llm.errors import ProviderError
from engram.services.errors import ServiceError, ShuttingDownError
from engram.services.run_events import (
    RunEventEncoder,
    RunNumbering,
    RunUsage,
    logged,
)
from engram.store.clock import clock_offset, database_time
from engram.store.database import Database
from engram.store.models import Run, Step
from engram.store.types import utc_now

logger = logging.getLogger(__name__)

RUNNING = "running"
FAILED = "failed"
CANCELLED = "cancelled"

# How often a closing sweep retries when an owner that was thought dead is
# still appending (each retry appends after the newest event it finds).
CLOSE_ATTEMPTS = 3
# A clock this far off the database's is worth a warning (leases are safe either way).
CLOCK_WARNING = timedelta(seconds=5)


@dataclass(frozen=True)
class StopCause:
    """How a run stopped by the executor ends: its status, stop reason and error text."""

    status: str
    stop_reason: str
    error: str | None = None


CANCELLED_BY_CLIENT = StopCause(CANCELLED, "cancelled")
INTERRUPTED = StopCause(
    FAILED, "interrupted", "the server shut down before the run could finish; send it again"
)
LOG_FAILED = StopCause(
    FAILED, "error", "the run's event log could not be written (its store failed); send it again"
)
OWNER_LOST = StopCause(
    FAILED,
    "owner_lost",
    "the server running this run stopped before it ended (its lease ran out); send it again",
)


@dataclass
class RunControl:
    """What the executor tells a running turn, and what the turn tells it of where it is.

    ``cancel_requested`` is read by the loop before each step (its safe
    point); ``stop_cause`` says how a turn interrupted mid-step ends;
    ``interruptible`` is set by the turn while it waits for the model, when
    interrupting loses nothing that was stored or done (never while a step's
    tools run or its results are being stored).
    """

    cancel_requested: bool = False
    stop_cause: StopCause | None = None
    interruptible: bool = False


@dataclass
class _Execution:
    organization_id: str
    run_id: str
    control: RunControl
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


def process_identity() -> str:
    """A name for this server process that no other process, here or elsewhere, shares."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class RunExecutor:
    """The runs this process executes, their leases, cancellations and logs."""

    def __init__(
        self,
        database: Database,
        events: EventLogBackend,
        encode: RunEventEncoder,
        *,
        lease_seconds: float = 30.0,
    ) -> None:
        self.database = database
        self.events = events
        self.encode = encode
        self.lease = timedelta(seconds=lease_seconds)
        self.owner = process_identity()
        # The database's clock minus this process's, measured at every renewal:
        # leases are written and judged on the database's clock (engram.store.clock).
        self.clock_offset = timedelta(0)
        self._runs: dict[str, _Execution] = {}
        self._accepting = True
        self._chores: list[asyncio.Task[None]] = []
        # Background closings of lost runs' logs (kept referenced until done).
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def log(self) -> RunEventLog:
        return self.events.log

    @property
    def _dialect(self) -> str:
        return self.database.engine.dialect.name

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start renewing leases, sweeping for lost runs and listening for cancellations."""
        if self._chores:
            return
        self._chores = [
            asyncio.create_task(self._maintain_forever(), name="run leases"),
            asyncio.create_task(self._listen_for_cancellations(), name="run cancellations"),
        ]

    async def drain(self, grace: float) -> None:
        """Start no new run; give the running ones ``grace`` seconds, then interrupt them."""
        self._accepting = False
        running = list(self._runs.values())
        if running and grace > 0:
            waits = [asyncio.create_task(execution.done.wait()) for execution in running]
            _, pending = await asyncio.wait(waits, timeout=grace)
            for waiter in pending:
                waiter.cancel()
        for execution in list(self._runs.values()):
            self._interrupt(execution, INTERRUPTED)
        tasks = [e.task for e in self._runs.values() if e.task is not None]
        if tasks:
            # Each interrupted run records its end and closes its log; bounded.
            await asyncio.wait(tasks, timeout=10)

    async def close(self) -> None:
        """Drain without grace (when not drained yet) and stop the background chores."""
        await self.drain(0)
        for chore in self._chores:
            chore.cancel()
        for chore in self._chores:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await chore
        self._chores = []

    # --- starting runs -----------------------------------------------------------------

    def check_accepting(self) -> None:
        """Refuse a new run while draining: another replica can take it."""
        if not self._accepting:
            raise ShuttingDownError("the server is shutting down and starts no new run; retry")

    def lease_columns(self) -> dict[str, Any]:
        """The columns that make a new run this process's, for one lease period.

        Values, not expressions (a run is inserted in bulk with its messages'
        statement shape), so the expiry is this process's time corrected to
        the database's clock.
        """
        expires = utc_now() + self.clock_offset + self.lease
        return {"lease_owner": self.owner, "lease_expires_at": expires}

    def launch(
        self,
        organization_id: str,
        run_id: str,
        control: RunControl,
        events: AsyncGenerator[Any, None],
    ) -> None:
        """Drive a started turn's events (``RunEvent`` items) into its log, in the background."""
        execution = _Execution(organization_id, run_id, control)
        self._runs[run_id] = execution
        execution.task = asyncio.create_task(self._execute(execution, events), name=f"run {run_id}")

    def is_local(self, run_id: str) -> bool:
        return run_id in self._runs

    # --- cancelling --------------------------------------------------------------------

    async def request_cancel(self, run_id: str) -> None:
        """Cancel the run wherever it runs: here directly, elsewhere through the signal."""
        self.cancel_local(run_id)
        await self.events.signals.publish_cancel(run_id)

    def cancel_local(self, run_id: str) -> None:
        """Cancel the run if this process runs it: now if it waits for the model, else
        before its next step."""
        execution = self._runs.get(run_id)
        if execution is None or execution.control.cancel_requested:
            return
        execution.control.cancel_requested = True
        if execution.control.interruptible:
            self._interrupt(execution, CANCELLED_BY_CLIENT)

    def _interrupt(self, execution: _Execution, cause: StopCause) -> None:
        if execution.control.stop_cause is None:
            execution.control.stop_cause = cause
        if execution.task is not None and not execution.task.done():
            execution.task.cancel()

    async def _listen_for_cancellations(self) -> None:
        async for run_id in self.events.signals.cancellations():
            self.cancel_local(run_id)

    # --- executing ---------------------------------------------------------------------

    async def _execute(self, execution: _Execution, events: AsyncGenerator[Any, None]) -> None:
        """Number the turn's events into its log; end the log however the turn ends."""
        run_id = execution.run_id
        numbering = RunNumbering(run_id)
        writer = RunEventWriter(self.log, run_id)
        control = execution.control
        try:
            ending: list[Any] = []
            try:
                async with contextlib.aclosing(events):
                    async for item in events:
                        try:
                            for record in numbering.records(item.event):
                                writer.add(logged(record, self.encode))
                        except Exception:
                            # The log failed for good (retries spent): the turn
                            # cannot be followed, so it ends as failed, not as
                            # a client's cancellation, when the generator closes.
                            control.stop_cause = control.stop_cause or LOG_FAILED
                            raise
            except asyncio.CancelledError:
                # Stopped by us; the turn recorded its end on the way out.
                cause = control.stop_cause or INTERRUPTED
                if cause is not OWNER_LOST:  # the sweep that took the run closed its log
                    usage = await self._usage(execution.organization_id, run_id)
                    ending = numbering.ending(cause.stop_reason, usage)
            except Exception as error:
                logger.warning("run %s failed: %s", run_id, error, exc_info=_is_unexpected(error))
                ending = numbering.failure(error)
            for record in ending:
                writer.add(logged(record, self.encode))
            await writer.flush()
        except EventLogConflictError:
            logger.warning("run %s was ended by another server; its later events dropped", run_id)
        except Exception:
            logger.exception("could not write the events of run %s", run_id)
        finally:
            with contextlib.suppress(Exception):
                await writer.close()
            self._runs.pop(run_id, None)
            execution.done.set()

    async def _usage(self, organization_id: str, run_id: str) -> RunUsage:
        async with self.database.read(organization_id) as session:
            row = (
                await session.execute(
                    select(
                        func.sum(Step.prompt_tokens),
                        func.sum(Step.completion_tokens),
                        func.count(),
                    ).where(Step.run_id == run_id)
                )
            ).one()
        return RunUsage(int(row[0] or 0), int(row[1] or 0), int(row[2] or 0))

    # --- leases ------------------------------------------------------------------------

    async def _maintain_forever(self) -> None:
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            # Separately: a failed measurement must not cost a renewal.
            await self.sync_clock_or_warn()
            try:
                await self.renew_leases()
                await self.close_lost_runs()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("renewing run leases failed; trying again in %.1fs", interval)

    async def sync_clock_or_warn(self) -> None:
        """:meth:`sync_clock`; a failure is logged and the last offset kept."""
        try:
            await self.sync_clock()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning(
                "could not compare this server's clock with the database's", exc_info=True
            )

    async def sync_clock(self) -> None:
        """Measure this process's clock against the database's (see :attr:`clock_offset`)."""
        if self._dialect != "postgresql":
            return  # one machine, one clock
        async with self.database.engine.connect() as connection:
            offset = await clock_offset(connection)
        if abs(offset) > CLOCK_WARNING and abs(offset - self.clock_offset) > CLOCK_WARNING:
            logger.warning(
                "this server's clock is %.1f s off the database's; run leases use the database's",
                -offset.total_seconds(),
            )
        self.clock_offset = offset

    async def renew_leases(self) -> None:
        """Extend the lease of every run here, and act on cancellations asked for elsewhere."""
        ids = list(self._runs)
        if not ids:
            return
        async with self.database.transaction(None, all_organizations=True) as session:
            renewed = (
                await session.execute(
                    update(Run)
                    .where(Run.id.in_(ids), Run.lease_owner == self.owner, Run.status == RUNNING)
                    .values(lease_expires_at=database_time(self._dialect, after=self.lease))
                    .returning(Run.id, Run.cancel_requested_at)
                    .execution_options(synchronize_session=False)
                )
            ).all()
            kept = {run_id: cancel_time for run_id, cancel_time in renewed}
            missing = [run_id for run_id in ids if run_id not in kept]
            lost: Sequence[str] = []
            if missing:
                # Ended while we renewed (normally), or taken by a sweep: only the latter stops us.
                lost = (
                    await session.scalars(
                        select(Run.id).where(
                            Run.id.in_(missing), Run.stop_reason == OWNER_LOST.stop_reason
                        )
                    )
                ).all()
        for run_id, cancel_time in kept.items():
            if cancel_time is not None:
                self.cancel_local(run_id)
        for run_id in lost:
            execution = self._runs.get(run_id)
            if execution is not None:
                logger.warning("run %s lost its lease to another server; stopping it", run_id)
                self._interrupt(execution, OWNER_LOST)

    async def close_lost_runs(self) -> list[str]:
        """End every running run whose lease lapsed (its process died) and close its log.

        A run whose row another transaction holds (a zombie owner's checkpoint,
        another server's sweep) is skipped, not waited for: the next sweep gets
        it.  So sweeps of several servers never wait on each other, and cannot
        deadlock by locking the same runs in different orders (PostgreSQL;
        SQLite runs one writer at a time anyway).
        """
        now = utc_now()
        lapsed = (
            select(Run.id)
            .where(
                Run.status == RUNNING,
                or_(
                    Run.lease_expires_at.is_(None),
                    Run.lease_expires_at < database_time(self._dialect),
                ),
            )
            .with_for_update(skip_locked=True)
        )
        async with self.database.transaction(None, all_organizations=True) as session:
            lost = (
                await session.execute(
                    update(Run)
                    .where(Run.id.in_(lapsed.scalar_subquery()), Run.status == RUNNING)
                    .values(
                        status=OWNER_LOST.status,
                        stop_reason=OWNER_LOST.stop_reason,
                        error=OWNER_LOST.error,
                        completed_at=now,
                        updated_at=now,
                    )
                    .returning(Run.id, Run.organization_id)
                    .execution_options(synchronize_session=False)
                )
            ).all()
        for run_id, organization_id in lost:
            logger.warning("run %s lost its server; ended it as failed (owner_lost)", run_id)
            await self.close_log(organization_id, run_id, OWNER_LOST.stop_reason)
        return [run_id for run_id, _ in lost]

    def close_logs_soon(
        self, organization_id: str, run_ids: Sequence[str], stop_reason: str
    ) -> None:
        """:meth:`close_log` for each run, in the background (a turn's start must not wait
        on it, nor fail between committing its run and launching it)."""
        for run_id in run_ids:
            task = asyncio.create_task(
                self._close_log_quietly(organization_id, run_id, stop_reason),
                name=f"close log of {run_id}",
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_log_quietly(self, organization_id: str, run_id: str, stop_reason: str) -> None:
        try:
            await self.close_log(organization_id, run_id, stop_reason)
        except Exception:
            # Its followers still end: they close the log themselves when idle.
            logger.warning("could not close the event log of run %s", run_id, exc_info=True)

    async def close_log(self, organization_id: str, run_id: str, stop_reason: str) -> None:
        """Append a run's ending (stop reason, usage) after whatever its log already holds."""
        usage = await self._usage(organization_id, run_id)
        for _ in range(CLOSE_ATTEMPTS):
            bounds = await self.log.bounds(run_id)
            if bounds is not None and bounds.final:
                return
            numbering = RunNumbering(run_id, after=bounds.last if bounds is not None else 0)
            ending = [logged(r, self.encode) for r in numbering.ending(stop_reason, usage)]
            try:
                await self.log.append(run_id, ending)
                return
            except EventLogConflictError:
                continue  # its old owner is still appending; go after its newest event
        logger.warning("could not close the event log of run %s", run_id)


def _is_unexpected(error: BaseException) -> bool:
    """Whether a run's failure deserves a traceback in the log (not a provider's or a rule's)."""
    return not isinstance(error, ProviderError | ServiceError)
