"""What was made from an unchanged value, kept for the next call that brings it back.

GetAgent reads its agent from the database on every call (nothing else keeps
a read fresh across processes and replicas), but between two changes of an
agent every read finds the same stored row.  The agent reader compares the
row it fetched with the one it fetched last time and, when they are equal,
hands back the very same processed row object
(:class:`~engram.store.agent_reads.AgentReader`); the layers above then tell
by identity alone that what they made of it last time is still right: the
service its view, the servicer its message.  Only conversions are saved,
never the read.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

KeyT = TypeVar("KeyT", bound=Hashable)
SourceT = TypeVar("SourceT")
RenderedT = TypeVar("RenderedT")

# Keys remembered at most: more agents than a busy process serves at once,
# few enough that a tenant with very many agents cannot grow it without bound.
MOST_REMEMBERED = 4096


class LastRenderings(Generic[KeyT, SourceT, RenderedT]):
    """Per key, the last source and what ``render`` made of it.

    :meth:`get` renders again unless ``same(source, last source)`` holds for
    that key.  ``same`` is identity by default: an equal but distinct object
    is rendered anew, which is always right; the agent reader passes
    equality, comparing the driver's values of a row.  What :meth:`get`
    returns is shared between callers, who must treat it as read-only.  Past
    ``most`` keys the one set longest ago is forgotten.
    """

    def __init__(
        self,
        render: Callable[[SourceT], RenderedT],
        *,
        same: Callable[[SourceT, SourceT], bool] = operator.is_,
        most: int = MOST_REMEMBERED,
    ) -> None:
        self._render = render
        self._same = same
        self._most = most
        self._last: dict[KeyT, tuple[SourceT, RenderedT]] = {}

    def get(self, key: KeyT, source: SourceT) -> RenderedT:
        last = self._last.get(key)
        if last is not None and self._same(source, last[0]):
            return last[1]
        rendered = self._render(source)
        # Set again, a key moves to the newest end: an agent read often stays.
        self._last.pop(key, None)
        if len(self._last) >= self._most:
            del self._last[next(iter(self._last))]
        self._last[key] = (source, rendered)
        return rendered

    def __len__(self) -> int:
        return len(self._last)
