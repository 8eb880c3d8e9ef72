"""Run event logs in Redis Streams, shared by every server of a deployment.

One stream per run, ``engram:run:<run_id>:events``, whose entry ids are
``<seq>-0``: Redis itself then keeps the entries ordered and refuses an id
that does not grow.  Each entry holds the payload; the run's last one also a
``final`` field.  An append is one Lua script (one round trip, atomic): it
checks the stored top, adds the batch, trims the stream to about the maximum
length and restarts its expiry, so a log lives ``retention_seconds`` after
its last event.  Readers follow with ``XREAD BLOCK``, never by polling.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from engram.adapters.event_log.base import (
    EventLogConflictError,
    EventLogUnavailableError,
    EventsExpiredError,
    LogBounds,
    LoggedEvent,
    RunEventLog,
    check_batch,
    check_read,
)

PAYLOAD_FIELD = b"payload"
FINAL_FIELD = b"final"
READ_BATCH = 256
# A blocking read that outlives its BLOCK by this much means Redis (or the
# network to it) hangs; the reader then fails instead of waiting forever.
BLOCK_GRACE_SECONDS = 5.0

# KEYS[1]: the run's stream.  ARGV[1]: max length; ARGV[2]: retention in ms;
# ARGV[3]: "1" when the batch's last event is final; then seq, payload pairs.
# Returns {1} when stored (or already stored, identically: a retry whose first
# attempt landed but whose reply was lost), {0, stored last seq, 1 if that one
# was final} when refused.  The caller validated the batch (increasing seqs)
# beforehand, so no XADD below can fail halfway: Lua scripts are not rolled back.
_APPEND_SCRIPT = """
local n = #ARGV
local function wants_final(i)
  return i == n - 1 and ARGV[3] == '1'
end
local function already_stored()
  local stored = redis.call('XRANGE', KEYS[1], ARGV[4] .. '-0', ARGV[n - 1] .. '-0')
  if #stored ~= (n - 3) / 2 then return false end
  for j, entry in ipairs(stored) do
    local i = 2 + 2 * j
    local fields = entry[2]
    if entry[1] ~= ARGV[i] .. '-0' or fields[2] ~= ARGV[i + 1] then return false end
    if (#fields > 2) ~= wants_final(i) then return false end
  end
  return true
end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then
  local id = top[1][1]
  local last = tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1))
  local ended = #top[1][2] > 2 and 1 or 0
  if ended == 1 or tonumber(ARGV[4]) <= last then
    if already_stored() then return {1} end
    return {0, last, ended}
  end
end
for i = 4, n, 2 do
  if wants_final(i) then
    redis.call('XADD', KEYS[1], ARGV[i] .. '-0', 'payload', ARGV[i + 1], 'final', '1')
  else
    redis.call('XADD', KEYS[1], ARGV[i] .. '-0', 'payload', ARGV[i + 1])
  end
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1}
"""


def run_stream_key(run_id: str) -> str:
    """The Redis key of a run's event stream."""
    return f"engram:run:{run_id}:events"


class RedisEventLog(RunEventLog):
    """Run event logs in Redis Streams, through a caller-owned ``redis.asyncio`` client.

    The client must not decode responses (payloads are bytes).  Best without
    a socket timeout (the factory's): blocking reads then wait a reader's
    whole idle period in one XREAD; with one, they block for half of it at a
    time.  Each command has its own ``command_timeout`` instead.  Every
    concurrent reader holds one pooled connection while it waits: of
    ``reader``'s pool when given (so readers never starve appends of
    connections), else of ``client``'s.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        retention_seconds: float,
        max_length: int,
        command_timeout: float = 10.0,
        reader: redis.Redis | None = None,
    ) -> None:
        if not retention_seconds > 0:
            raise ValueError(f"retention_seconds must be > 0, got {retention_seconds}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self._client = client
        self._reader = reader if reader is not None else client
        self._retention_ms = max(1, round(retention_seconds * 1000))
        self._max_length = max_length
        self._command_timeout = command_timeout
        self._append_script = client.register_script(_APPEND_SCRIPT)
        # A blocking read must answer before the client's socket timeout (if
        # it has one) gives up on it: longer idle periods are waited out in
        # several shorter blocks.
        socket_timeout = self._reader.connection_pool.connection_kwargs.get("socket_timeout")
        self._longest_block = None if socket_timeout is None else float(socket_timeout) / 2

    async def append(self, run_id: str, events: Sequence[LoggedEvent]) -> None:
        check_batch(events)
        args: list[int | bytes] = [
            self._max_length,
            self._retention_ms,
            1 if events[-1].final else 0,
        ]
        for event in events:
            args += (event.seq, event.payload)
        with _unavailable_on_failure(run_id):
            async with asyncio.timeout(self._command_timeout):
                reply = await self._append_script(keys=[run_stream_key(run_id)], args=args)
        if int(reply[0]) != 1:
            raise EventLogConflictError(run_id, events[0].seq, int(reply[1]), int(reply[2]) == 1)

    async def bounds(self, run_id: str) -> LogBounds | None:
        key = run_stream_key(run_id)
        with _unavailable_on_failure(run_id):
            async with asyncio.timeout(self._command_timeout):
                # One MULTI: both ends come from the same instant.
                pipe = self._client.pipeline(transaction=True)
                pipe.xrange(key, "-", "+", count=1)
                pipe.xrevrange(key, "+", "-", count=1)
                oldest, newest = await pipe.execute()
        if not oldest or not newest:
            return None
        first = _to_event(*oldest[0])
        last = _to_event(*newest[0])
        return LogBounds(first=first.seq, last=last.seq, final=last.final)

    async def read(
        self, run_id: str, after: int, *, idle_seconds: float
    ) -> AsyncIterator[LoggedEvent | None]:
        check_read(after, idle_seconds)
        key = run_stream_key(run_id)
        if after > 0:
            # A client resuming from the end of a finished run: nothing will follow.
            bounds = await self.bounds(run_id)
            if bounds is not None and bounds.final and bounds.last <= after:
                return
        loop = asyncio.get_running_loop()
        idle_until = loop.time() + idle_seconds
        cursor = after
        while True:
            remaining = max(0.001, idle_until - loop.time())
            block = (
                remaining if self._longest_block is None else min(remaining, self._longest_block)
            )
            # The same blocking XREAD replays what is stored (it answers at
            # once when entries are there) and then waits for the live tail.
            # A reader cancelled inside it gets its connection closed by
            # redis-py, never handed back to the pool mid-reply.
            with _unavailable_on_failure(run_id):
                async with asyncio.timeout(block + BLOCK_GRACE_SECONDS):
                    reply = await self._reader.xread(
                        {key: f"{cursor}-0"}, count=READ_BATCH, block=math.ceil(block * 1000)
                    )
            events = [_to_event(*entry) for entry in _xread_entries(reply, key)]
            if not events:
                if block == remaining:  # a whole idle period passed
                    yield None
                    idle_until = loop.time() + idle_seconds
                continue
            if events[0].seq != cursor + 1:
                await self._refuse_if_trimmed(run_id, cursor)
            for event in events:
                yield event
                cursor = event.seq
                if event.final:
                    return
            idle_until = loop.time() + idle_seconds

    async def close(self) -> None:
        """Nothing of its own to release: the client belongs to whoever made it."""

    async def _refuse_if_trimmed(self, run_id: str, cursor: int) -> None:
        """Raise when seq ``cursor + 1`` is older than the oldest kept entry."""
        with _unavailable_on_failure(run_id):
            async with asyncio.timeout(self._command_timeout):
                oldest = await self._client.xrange(run_stream_key(run_id), "-", "+", count=1)
        if oldest:
            first = _to_event(*oldest[0])
            if first.seq > cursor + 1:
                raise EventsExpiredError(run_id, cursor, first.seq)


@contextmanager
def _unavailable_on_failure(run_id: str) -> Iterator[None]:
    """Redis failures become the adapter's own error, so callers need not know redis-py."""
    try:
        yield
    except (RedisError, OSError, TimeoutError) as error:
        raise EventLogUnavailableError(
            f"run {run_id}: the Redis event log failed: {error or type(error).__name__}"
        ) from error


def _to_event(entry_id: Any, fields: Any) -> LoggedEvent:
    """A stream entry as the event it stores; its id is ``<seq>-0``."""
    seq = int(bytes(entry_id).split(b"-", 1)[0])
    if not isinstance(fields, dict) or PAYLOAD_FIELD not in fields:
        raise EventLogUnavailableError(f"stream entry {entry_id!r} is not a run event")
    return LoggedEvent(seq=seq, payload=bytes(fields[PAYLOAD_FIELD]), final=FINAL_FIELD in fields)


def _xread_entries(reply: Any, key: str) -> list[Any]:
    """The entries of one stream in an XREAD reply, in either protocol's shape.

    RESP2 answers ``[[key, entries]]``, RESP3 ``{key: [entries]}``; a URL may
    pick either, so both are accepted.
    """
    if not reply:
        return []
    if isinstance(reply, dict):
        streams = reply.get(key.encode()) or reply.get(key) or []
        return list(streams[0]) if streams else []
    for stream_key, entries in reply:
        if bytes(stream_key) == key.encode():
            return list(entries)
    return []
