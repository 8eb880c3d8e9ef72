"""Failures of an LLM provider, in terms the agent loop and the API can act on.

Each carries a stable ``reason`` from the ``engram.v1.ErrorReason`` catalog.
They describe the *provider's* failure, never the caller's credentials: a
bad provider key is a server configuration problem (FAILED_PRECONDITION
naming the provider), not UNAUTHENTICATED for the client.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base of provider failures. ``provider`` names the configured provider."""

    reason = "PROVIDER_UNAVAILABLE"
    retryable = False

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider


class ProviderAuthError(ProviderError):
    """The provider refused the server's credentials for it."""

    reason = "PROVIDER_AUTH_FAILED"


class ProviderRateLimitedError(ProviderError):
    """The provider is throttling us; ``retry_after`` is its advice in seconds, if any."""

    reason = "PROVIDER_RATE_LIMITED"
    retryable = True

    def __init__(self, provider: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(provider, message)
        self.retry_after = retry_after


class ProviderUnavailableError(ProviderError):
    """The provider could not be reached, or failed on its side (5xx, overloaded)."""

    reason = "PROVIDER_UNAVAILABLE"
    retryable = True


class ProviderTimeoutError(ProviderError):
    """The provider did not answer within the time left for the call."""

    reason = "PROVIDER_TIMEOUT"
    retryable = True


class ProviderRejectedRequestError(ProviderError):
    """The provider refused the request itself (unknown model, invalid parameters)."""

    reason = "PROVIDER_REJECTED_REQUEST"


class ContextWindowExceededError(ProviderError):
    """The prompt does not fit the model's context window; the loop compacts and retries."""

    reason = "CONTEXT_WINDOW_EXCEEDED"


class InvalidProviderResponseError(ProviderError):
    """The provider answered with something that is not a usable completion."""

    reason = "INVALID_PROVIDER_RESPONSE"
