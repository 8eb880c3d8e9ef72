"""How provider failures reach a gRPC client: code, reason, provider name, retry advice."""

from __future__ import annotations

import pytest
from google.rpc import code_pb2, error_details_pb2

from engram.adapters.llm.errors import (
    ContextWindowExceededError,
    InvalidProviderResponseError,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimitedError,
    ProviderRejectedRequestError,
    ProviderTimeoutError,
    ProviderUnavailableError,
)
from engram.adapters.llm.retry_after import retry_after_seconds
from engram.rpc.errors import map_error, reason_of, unpack_detail


@pytest.mark.parametrize(
    ("error", "code", "retry"),
    [
        (ProviderAuthError("openai", "bad key"), code_pb2.FAILED_PRECONDITION, False),
        (ProviderRateLimitedError("openai", "slow down"), code_pb2.RESOURCE_EXHAUSTED, True),
        (ProviderUnavailableError("groq", "503"), code_pb2.UNAVAILABLE, True),
        (ProviderTimeoutError("ollama", "slow"), code_pb2.DEADLINE_EXCEEDED, True),
        (ProviderRejectedRequestError("openai", "no model"), code_pb2.FAILED_PRECONDITION, False),
        (ContextWindowExceededError("anthropic", "too long"), code_pb2.FAILED_PRECONDITION, False),
        (InvalidProviderResponseError("vllm", "garbage"), code_pb2.UNAVAILABLE, True),
    ],
)
def test_each_provider_failure_has_its_code(error: ProviderError, code: int, retry: bool) -> None:
    status = map_error(error, correlation_id="c").status
    assert status.code == code
    assert reason_of(status) == error.reason
    info = unpack_detail(status, error_details_pb2.ErrorInfo)
    assert info is not None and info.metadata["provider"] == error.provider
    assert (unpack_detail(status, error_details_pb2.RetryInfo) is not None) is retry
    # A bad provider key is the operator's problem, never the caller's credentials.
    assert status.code != code_pb2.UNAUTHENTICATED


def test_rate_limit_passes_on_the_providers_advice() -> None:
    status = map_error(
        ProviderRateLimitedError("openai", "slow down", retry_after=2.5), correlation_id="c"
    ).status
    retry = unpack_detail(status, error_details_pb2.RetryInfo)
    assert retry is not None
    assert retry.retry_delay.seconds == 2 and retry.retry_delay.nanos == 500_000_000


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a past date: retry now
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers) == seconds
