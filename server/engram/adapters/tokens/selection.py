"""The token counter for an agent's model handle, loaded lazily and never on the event loop.

Loading a tiktoken encoding parses a few megabytes (about a second here), and
on a machine without the file in ``TIKTOKEN_CACHE_DIR`` tiktoken downloads it,
with no timeout of its own.  So each encoding is loaded once per process, in
a daemon thread (a hung download must not hold up the process's exit), and a
caller waits for it at most :data:`DEFAULT_LOAD_TIMEOUT` seconds after the
load began.  A load that fails or is still running after that leaves the
estimate in its place, with one warning in the log; a slow load that succeeds
later is used from then on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tiktoken

from engram.adapters.tokens.counter import TokenCounter
from engram.adapters.tokens.estimate import ESTIMATE
from engram.adapters.tokens.offline import CACHE_VARIABLE
from engram.adapters.tokens.openai import TiktokenCounter, encoding_for_handle

logger = logging.getLogger(__name__)

DEFAULT_LOAD_TIMEOUT = 15.0  # seconds: loading from the cache takes about one


@dataclass
class _Load:
    """One encoding's load, shared by every caller in the process."""

    future: concurrent.futures.Future[TokenCounter]
    started: float  # time.monotonic() when the load began
    warned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class TokenCounters:
    """Picks and caches the counter for each model handle."""

    def __init__(
        self,
        load: Callable[[str], tiktoken.Encoding] = tiktoken.get_encoding,
        *,
        load_timeout: float = DEFAULT_LOAD_TIMEOUT,
        estimate: TokenCounter = ESTIMATE,
    ) -> None:
        self._load_encoding = load
        self._load_timeout = load_timeout
        self._estimate = estimate
        self._loads: dict[str, _Load] = {}
        self._lock = threading.Lock()

    async def for_model(self, handle: str) -> TokenCounter:
        """The counter for ``provider/model``: tiktoken for OpenAI models, else the estimate."""
        encoding = encoding_for_handle(handle)
        if encoding is None:
            return self._estimate
        return await self._encoding_counter(encoding)

    async def _encoding_counter(self, encoding: str) -> TokenCounter:
        load = self._start(encoding)
        if not load.future.done():
            remaining = load.started + self._load_timeout - time.monotonic()
            if remaining > 0:
                await _wait(load.future, remaining)
        if load.future.done():
            error = load.future.exception()
            if error is None:
                return load.future.result()
            self._warn_once(
                load,
                f"tiktoken could not load {encoding} ({type(error).__name__}: {error}); "
                f"set {CACHE_VARIABLE} to a directory holding its file (see the README)",
            )
        else:
            self._warn_once(
                load,
                f"tiktoken did not load {encoding} within {self._load_timeout:g} s "
                f"(no network? see {CACHE_VARIABLE} in the README)",
            )
        return self._estimate

    def _start(self, encoding: str) -> _Load:
        """The encoding's load, begun in a daemon thread on first use."""
        with self._lock:
            load = self._loads.get(encoding)
            if load is None:
                load = _Load(concurrent.futures.Future(), time.monotonic())
                self._loads[encoding] = load
                threading.Thread(
                    target=self._run_load,
                    args=(load.future, encoding),
                    name=f"tiktoken-load-{encoding}",
                    daemon=True,
                ).start()
            return load

    def _run_load(self, future: concurrent.futures.Future[TokenCounter], encoding: str) -> None:
        future.set_running_or_notify_cancel()  # from now on nobody can cancel it
        try:
            counter = TiktokenCounter(self._load_encoding(encoding))
        except BaseException as error:  # any failure at all means: use the estimate
            future.set_exception(error)
        else:
            future.set_result(counter)

    @staticmethod
    def _warn_once(load: _Load, message: str) -> None:
        with load.lock:
            if load.warned:
                return
            load.warned = True
        logger.warning("%s; counting tokens with the estimate instead", message)


async def _wait(future: concurrent.futures.Future[TokenCounter], seconds: float) -> None:
    """Wait up to ``seconds`` for the load to finish, however it finishes.

    The thread wakes this loop through an event, so neither a timeout nor the
    caller's cancellation touches the shared load, and a loop closed before
    the load ends is simply not woken.
    """
    loop = asyncio.get_running_loop()
    finished = asyncio.Event()

    def wake(_: concurrent.futures.Future[TokenCounter]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(finished.set)

    future.add_done_callback(wake)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finished.wait(), seconds)


@functools.cache
def default_counters() -> TokenCounters:
    """The process's counters: each encoding is loaded once, whoever asks first."""
    return TokenCounters()
