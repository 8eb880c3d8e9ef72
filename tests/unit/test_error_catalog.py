"""Every reason the server code can raise is in the published ErrorReason catalog."""

from __future__ import annotations

import engram.secrets as secrets
from engram.store.errors import ALL_REASONS
from engram.v1 import error_reason_pb2


def catalog() -> set[str]:
    return set(error_reason_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}


def test_store_reasons_are_in_the_catalog() -> None:
    assert catalog() >= ALL_REASONS


def test_secret_reasons_are_in_the_catalog() -> None:
    reasons = {
        cls.reason
        for cls in vars(secrets).values()
        if isinstance(cls, type)
        and issubclass(cls, secrets.SecretsError)
        and cls is not secrets.SecretsError
    }
    assert reasons
    assert reasons <= catalog()


def test_provider_reasons_are_in_the_catalog_and_mapped() -> None:
    from engram.adapters.llm import errors as provider_errors
    from engram.adapters.llm import registry
    from engram.rpc.errors import MAPPED_REASONS

    reasons = {
        cls.reason
        for module in (provider_errors, registry)
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, provider_errors.ProviderError)
    }
    assert len(reasons) == 8
    assert reasons <= catalog()
    assert reasons <= MAPPED_REASONS


def test_durable_run_reasons_are_in_the_catalog_and_mapped() -> None:
    from engram.adapters.event_log.base import EventLogUnavailableError
    from engram.rpc.errors import MAPPED_REASONS
    from engram.services import run_errors
    from engram.services.errors import ShuttingDownError

    reasons = {
        cls.reason
        for cls in (
            run_errors.RunEventsExpiredError,
            run_errors.RunPositionUnknownError,
            run_errors.RunAlreadyEndedError,
            ShuttingDownError,
            EventLogUnavailableError,
        )
    }
    assert reasons == {
        "RUN_EVENTS_EXPIRED",
        "RUN_POSITION_UNKNOWN",
        "RUN_ALREADY_ENDED",
        "SHUTTING_DOWN",
        "EVENT_LOG_UNAVAILABLE",
    }
    assert reasons <= catalog()
    assert reasons <= MAPPED_REASONS
