"""A provider registry pointed at the fake provider, for tests of the runtime and the API."""

from __future__ import annotations

from collections.abc import Mapping

from engram.adapters.llm.openai_chat import OpenAIChatProvider, OpenAIChatSettings
from engram.adapters.llm.registry import LLMProvider, ProviderKind, ProviderRegistry
from support.fake_provider import FakeProvider

MODEL = "openai/gpt-test"


def _build_without_retries(kind: ProviderKind, env: Mapping[str, str]) -> LLMProvider:
    """The registry's OpenAI provider, minus SDK retries, so scripted errors fail at once."""
    return OpenAIChatProvider(
        OpenAIChatSettings(
            name=kind.name,
            api_key=env.get(kind.key_variable, ""),
            base_url=kind.base_url(env),
            max_retries=0,
        )
    )


def fake_registry(provider: FakeProvider) -> ProviderRegistry:
    """An ``openai`` provider (handle ``openai/<model>``) that talks to ``provider``."""
    return ProviderRegistry.from_environment(
        {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": provider.openai_base_url},
        build=_build_without_retries,
    )
