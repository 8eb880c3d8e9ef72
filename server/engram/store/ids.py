"""Resource identifiers of the form ``<prefix>-<uuid4>``.

The prefix makes an id self-describing in logs and lets the API reject an id
of the wrong kind before touching the database.
"""

from __future__ import annotations

import enum
import functools
import re
import uuid


class IdPrefix(enum.StrEnum):
    """The prefix of every kind of resource id."""

    ORGANIZATION = "org"
    USER = "user"
    API_KEY = "apikey"
    AGENT = "agent"
    BLOCK = "block"
    TOOL = "tool"
    MESSAGE = "message"
    RUN = "run"
    STEP = "step"
    ARCHIVE = "archive"
    PASSAGE = "passage"
    PROVIDER = "provider"
    AGENT_ENV_VAR = "agent-env"
    SOURCE = "source"
    FILE = "file"


_UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def new_id(prefix: IdPrefix) -> str:
    """A fresh id for a resource of kind ``prefix``."""
    return f"{prefix.value}-{uuid.uuid4()}"


def is_valid_id(value: str, prefix: IdPrefix) -> bool:
    """Whether ``value`` is a well-formed id of kind ``prefix``."""
    return _id_pattern(prefix).fullmatch(value) is not None


@functools.cache
def _id_pattern(prefix: IdPrefix) -> re.Pattern[str]:
    # Compiled once per kind: every call that names a resource checks its id.
    return re.compile(rf"{re.escape(prefix.value)}-{_UUID4}")
