"""Translation helpers shared by the servicers: names, timestamps, structs, field masks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from engram.services.errors import InvalidArgumentError
from engram.store.ids import IdPrefix, is_valid_id


def resource_id(name: str, collection: str, prefix: IdPrefix, field: str) -> str:
    """The id in a resource name such as ``agents/agent-…``; INVALID_ARGUMENT when malformed."""
    head, _, tail = name.partition("/")
    if not name:
        raise InvalidArgumentError.field(field, "is required")
    if head != collection or not is_valid_id(tail, prefix):
        raise InvalidArgumentError.field(
            field, f"must be a resource name of the form {collection}/{prefix.value}-<uuid4>"
        )
    return tail


def nested_id(
    name: str,
    parent_collection: str,
    parent_prefix: IdPrefix,
    collection: str,
    prefix: IdPrefix,
    field: str,
) -> tuple[str, str]:
    """(parent id, id) from ``organizations/{org}/users/{user}``-style names."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != parent_collection
        or parts[2] != collection
        or not is_valid_id(parts[1], parent_prefix)
        or not is_valid_id(parts[3], prefix)
    ):
        raise InvalidArgumentError.field(
            field,
            f"must be a resource name of the form {parent_collection}/{parent_prefix.value}-<uuid4>"
            f"/{collection}/{prefix.value}-<uuid4>",
        )
    return parts[1], parts[3]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """``value`` as a Timestamp (a naive datetime is taken as UTC, as protobuf does).

    Built from the difference to the epoch: a third of the cost of
    ``Timestamp.FromDatetime``, and every resource carries two or more.
    """
    if value is None:
        return None
    since_epoch = value - (_NAIVE_EPOCH if value.tzinfo is None else _EPOCH)
    return timestamp_pb2.Timestamp(
        seconds=since_epoch.days * 86_400 + since_epoch.seconds,
        nanos=since_epoch.microseconds * 1_000,
    )


def to_struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if value:
        struct.update(dict(value))
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


def message_to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def changed_fields(
    message: Message,
    mask: FieldMask,
    readers: Mapping[str, Callable[[Any], Any]],
) -> dict[str, Any]:
    """The fields an update sets, and their new values.

    With an empty mask, the fields set in ``message``; ``*`` means every
    updatable field; otherwise exactly the paths named. A path that is not
    updatable is INVALID_ARGUMENT, since silently ignoring it would lose the
    caller's change.
    """
    paths: Iterable[str]
    if not mask.paths:
        paths = [
            descriptor.name for descriptor, _ in message.ListFields() if descriptor.name in readers
        ]
    elif list(mask.paths) == ["*"]:
        paths = list(readers)
    else:
        unknown = [path for path in mask.paths if path not in readers]
        if unknown:
            raise InvalidArgumentError.field(
                "update_mask",
                f"cannot update {', '.join(unknown)}; "
                f"updatable fields: {', '.join(sorted(readers))}",
            )
        paths = list(mask.paths)
    return {path: readers[path](message) for path in paths}
