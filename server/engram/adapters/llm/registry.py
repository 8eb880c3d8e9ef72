"""Which LLM providers this server can call, and how a model handle finds one.

A model handle is ``provider/model`` (``openai/gpt-4o-mini``,
``ollama/llama3.2``); the part before the first slash picks the provider, the
rest is passed to it unchanged (OpenRouter's own model names contain
slashes).  Providers come from two places: the environment, where each is
configured by the variables its own tools already use (so an existing shell
setup carries over), and an organization's run-time configuration
(:class:`ProviderConfig`, stored by the provider service), which is built by
the same code.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from engram.adapters.llm.chat import ChatRequest, ChatResult, StreamEvent
from engram.adapters.llm.errors import ProviderError


class LLMProvider(Protocol):
    """What the agent loop needs from a provider adapter."""

    name: str

    async def complete(self, request: ChatRequest) -> ChatResult: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]: ...

    async def list_models(self) -> list[str]: ...

    async def close(self) -> None: ...


class ModelResolver(Protocol):
    """Finds the provider and the provider's model name for an organization's model handle."""

    async def resolve_model(self, organization_id: str, handle: str) -> tuple[LLMProvider, str]: ...


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
    key_required: bool = False  # a hosted API that refuses calls without a key
    url_required: bool = False  # no usable default: the server's address must be given

    def configured(self, env: Mapping[str, str]) -> bool:
        if self.key_variable and env.get(self.key_variable):
            return True
        return bool(self.url_variable and env.get(self.url_variable))

    def base_url(self, env: Mapping[str, str]) -> str | None:
        return self.endpoint(env.get(self.url_variable, "") if self.url_variable else "")

    def endpoint(self, url: str) -> str | None:
        """The URL the SDK is given for a configured ``url`` ("" means the default)."""
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
        key_required=True,
    ),
    ProviderKind(
        "anthropic", "anthropic", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", key_required=True
    ),
    ProviderKind(
        "azure",
        "openai",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_ENDPOINT",
        url_suffix="/openai/v1",
        max_tokens_field="max_completion_tokens",
        key_required=True,
        url_required=True,
    ),
    ProviderKind(
        "groq",
        "openai",
        "GROQ_API_KEY",
        "GROQ_BASE_URL",
        "https://api.groq.com/openai/v1",
        key_required=True,
    ),
    ProviderKind(
        "openrouter",
        "openai",
        "OPENROUTER_API_KEY",
        "OPENROUTER_BASE_URL",
        "https://openrouter.ai/api/v1",
        key_required=True,
    ),
    ProviderKind(
        "together",
        "openai",
        "TOGETHER_API_KEY",
        "TOGETHER_BASE_URL",
        "https://api.together.xyz/v1",
        key_required=True,
    ),
    ProviderKind("ollama", "openai", "", "OLLAMA_BASE_URL", url_suffix="/v1", url_required=True),
    ProviderKind("vllm", "openai", "VLLM_API_KEY", "VLLM_API_BASE", url_required=True),
    ProviderKind("lmstudio", "openai", "", "LMSTUDIO_BASE_URL", url_required=True),
    ProviderKind("llamacpp", "openai", "", "LLAMACPP_BASE_URL", url_required=True),
)

# Any other server speaking Chat Completions; only organizations configure it
# (no variables), since its name is whatever the organization chooses.
OPENAI_COMPATIBLE = ProviderKind("openai_compatible", "openai", url_required=True)

PROVIDER_KINDS: dict[str, ProviderKind] = {
    kind.name: kind for kind in (*KNOWN_PROVIDERS, OPENAI_COMPATIBLE)
}
"""Every kind of provider, by its type name, for configurations made at run time."""


@dataclass(frozen=True)
class ProviderConfig:
    """One provider as an organization configured it: its handle name, kind, key and URL."""

    name: str
    kind: ProviderKind
    api_key: str = ""
    base_url: str = ""  # as configured; "" means the kind's default


# The modules build_provider and the embeddings registry import on first use.
SDK_ADAPTER_MODULES = (
    "engram.adapters.llm.anthropic_messages",
    "engram.adapters.llm.openai_chat",
    "engram.adapters.embeddings.openai_embeddings",
)


def import_provider_sdks() -> None:
    """Import every SDK-backed adapter: seconds of CPU, meant for a worker thread.

    The server runs it in a thread once it is serving, so that a provider an
    organization configures later does not stall the event loop importing
    its SDK (see :func:`build_provider`).
    """
    for module in SDK_ADAPTER_MODULES:
        importlib.import_module(module)


def build_provider(config: ProviderConfig) -> LLMProvider:
    """The adapter for ``config``; the client it holds is reused for every call.

    Each adapter's module is imported here, when a provider of its API is first built:
    importing the ``anthropic`` SDK costs about 2 s of CPU and ``openai`` about 1 s, which
    every ``engram`` process (and each ``--workers`` worker) would otherwise pay at
    startup whether or not such a provider is configured.  Providers configured in the
    environment are built at startup, so only the first provider an organization
    configures with an API no other provider uses could pay that import, once per
    process, on the event loop; ``engram serve`` imports them in a worker thread as
    soon as it is serving (:func:`import_provider_sdks`) so that in practice none does.
    """
    kind, key = config.kind, config.api_key
    url = kind.endpoint(config.base_url)
    if kind.api == "anthropic":
        from engram.adapters.llm.anthropic_messages import AnthropicProvider, AnthropicSettings

        return AnthropicProvider(AnthropicSettings(name=config.name, api_key=key, base_url=url))
    from engram.adapters.llm.openai_chat import OpenAIChatProvider, OpenAIChatSettings

    headers = {"api-key": key} if kind.name == "azure" and key else {}
    return OpenAIChatProvider(
        OpenAIChatSettings(
            name=config.name,
            api_key=key,
            base_url=url,
            max_tokens_field=kind.max_tokens_field,
            default_headers=headers,
        )
    )


def _build(kind: ProviderKind, env: Mapping[str, str]) -> LLMProvider:
    key = env.get(kind.key_variable, "") if kind.key_variable else ""
    url = env.get(kind.url_variable, "") if kind.url_variable else ""
    return build_provider(ProviderConfig(kind.name, kind, key, url))


class ProviderRegistry:
    """The providers configured from the environment, by name.

    As a :class:`ModelResolver` it ignores the organization: every
    organization sees the same environment providers.
    """

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

    def get(self, name: str) -> LLMProvider | None:
        """The provider configured under ``name``, if any."""
        return self._providers.get(name)

    async def resolve_model(self, organization_id: str, handle: str) -> tuple[LLMProvider, str]:
        return self.resolve(handle)

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
