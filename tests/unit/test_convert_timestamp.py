"""The API's datetime -> Timestamp conversion agrees with protobuf's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from engram.api.convert import timestamp


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 11, 27, 1, 2, 3, 456789, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),  # before the epoch
        datetime(2026, 11, 27, 3, 2, 3, 1, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 11, 27, 1, 2, 3, 999999),  # naive: taken as UTC
        datetime(1970, 1, 1, tzinfo=UTC),
    ],
)
def test_it_matches_from_datetime(value: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected


def test_none_stays_none() -> None:
    assert timestamp(None) is None
