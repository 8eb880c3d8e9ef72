"""Which LLM providers this server can call, configured from the environment.

A model handle is ``provider/model`` (``openai/gpt-4o-mini``,
``ollama/llama3.2``); the part before the first slash picks the provider, the
rest is passed to it unchanged (OpenRouter's own model names contain
slashes).  Each provider is configured by the variables its own tools
already use, so an existing shell setup carries over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from engram.adapters.llm.anthropic_messages import AnthropicProvider, AnthropicSettings
from engram.adapters.llm.chat import ChatRequest, ChatResult, StreamEvent
from engram.adapters.llm.errors import ProviderError
from engram.adapters.llm.openai_chat import OpenAIChatProvider, OpenAIChatSettings


class LLMProvider(Protocol):
    """What the agent loop needs from a provider adapter."""

    name: str

    async def complete(self, request: ChatRequest) -> ChatResult: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]: ...

    async def list_models(self) -> list[str]: ...

    async def close(self) -> None: ...


class ProviderNotConfiguredError(ProviderError):
    """A model handle names a provider this server has no configuration for."""

    reason = "PROVIDER_NOT_CONFIGURED"


@dataclass(frozen=True)
class ProviderKind:
    """One provider this server knows how to configure, and from which variables."""

    name: str
    api: str  # "openai" (Chat Completions) or "anthropic" (Messages)
    key_variable: str = ""  # the API key's variable, when the provider needs one
    url_variable: str = ""  # the base URL's variable
    default_url: str | None = None  # used when the key is set and the URL is not
    url_suffix: str = ""  # appended to a configured URL (Ollama serves /v1 under its root)
    max_tokens_field: str = "max_tokens"

    def configured(self, env: Mapping[str, str]) -> bool:
        if self.key_variable and env.get(self.key_variable):
            return True
        return bool(self.url_variable and env.get(self.url_variable))

    def base_url(self, env: Mapping[str, str]) -> str | None:
        url = env.get(self.url_variable, "") if self.url_variable else ""
        if not url:
            return self.default_url
        return url.rstrip("/") + self.url_suffix


KNOWN_PROVIDERS: tuple[ProviderKind, ...] = (
    ProviderKind(
        "openai",
        "openai",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        max_tokens_field="max_completion_tokens",
    ),
    ProviderKind("anthropic", "anthropic", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
    ProviderKind(
        "azure",
        "openai",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_ENDPOINT",
        url_suffix="/openai/v1",
        max_tokens_field="max_completion_tokens",
    ),
    ProviderKind(
        "groq", "openai", "GROQ_API_KEY", "GROQ_BASE_URL", "https://api.groq.com/openai/v1"
    ),
    ProviderKind(
        "openrouter",
        "openai",
        "OPENROUTER_API_KEY",
        "OPENROUTER_BASE_URL",
        "https://openrouter.ai/api/v1",
    ),
    ProviderKind(
        "together", "openai", "TOGETHER_API_KEY", "TOGETHER_BASE_URL", "https://api.together.xyz/v1"
    ),
    ProviderKind("ollama", "openai", "", "OLLAMA_BASE_URL", url_suffix="/v1"),
    ProviderKind("vllm", "openai", "VLLM_API_KEY", "VLLM_API_BASE"),
    ProviderKind("lmstudio", "openai", "", "LMSTUDIO_BASE_URL"),
    ProviderKind("llamacpp", "openai", "", "LLAMACPP_BASE_URL"),
)


def _build(kind: ProviderKind, env: Mapping[str, str]) -> LLMProvider:
    key = env.get(kind.key_variable, "") if kind.key_variable else ""
    if kind.api == "anthropic":
        return AnthropicProvider(
            AnthropicSettings(name=kind.name, api_key=key, base_url=kind.base_url(env))
        )
    headers = {"api-key": key} if kind.name == "azure" and key else {}
    return OpenAIChatProvider(
        OpenAIChatSettings(
            name=kind.name,
            api_key=key,
            base_url=kind.base_url(env),
            max_tokens_field=kind.max_tokens_field,
            default_headers=headers,
        )
    )


class ProviderRegistry:
    """The configured providers, by name."""

    def __init__(self, providers: Mapping[str, LLMProvider]) -> None:
        self._providers = dict(providers)

    @classmethod
    def from_environment(
        cls,
        env: Mapping[str, str],
        build: Callable[[ProviderKind, Mapping[str, str]], LLMProvider] = _build,
    ) -> ProviderRegistry:
        return cls(
            {kind.name: build(kind, env) for kind in KNOWN_PROVIDERS if kind.configured(env)}
        )

    @property
    def names(self) -> list[str]:
        return sorted(self._providers)

    def resolve(self, handle: str) -> tuple[LLMProvider, str]:
        """The provider and the provider's model name for ``provider/model``."""
        name, _, model = handle.partition("/")
        provider = self._providers.get(name)
        if provider is None or not model:
            configured = ", ".join(self.names) or "none"
            raise ProviderNotConfiguredError(
                name or handle,
                f"no provider is configured for the model handle {handle!r} "
                f"(configured: {configured}); set its API key or base URL variable",
            )
        return provider, model

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
