"""Durable runs' event logs: append once, replay and follow from anywhere.

``open_event_log`` picks Redis Streams (shared by every server) when a URL is
configured, else an in-process log; both keep the same contract
(``RunEventLog``).  ``RunEventWriter`` batches one run's appends;
``RunSignals`` carries run cancellations between servers.
"""

from engram.adapters.event_log.base import (
    EventLogConflictError,
    EventLogUnavailableError,
    EventsExpiredError,
    LogBounds,
    LoggedEvent,
    RunEventLog,
)
from engram.adapters.event_log.factory import EventLogBackend, open_event_log
from engram.adapters.event_log.memory_log import MemoryEventLog
from engram.adapters.event_log.redis_log import RedisEventLog
from engram.adapters.event_log.signals import MemoryRunSignals, RedisRunSignals, RunSignals
from engram.adapters.event_log.writer import EventWriterClosedError, RunEventWriter

__all__ = [
    "EventLogBackend",
    "EventLogConflictError",
    "EventLogUnavailableError",
    "EventWriterClosedError",
    "EventsExpiredError",
    "LogBounds",
    "LoggedEvent",
    "MemoryEventLog",
    "MemoryRunSignals",
    "RedisEventLog",
    "RedisRunSignals",
    "RunEventLog",
    "RunEventWriter",
    "RunSignals",
    "open_event_log",
]
