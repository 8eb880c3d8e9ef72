"""Providers configured from the environment, and model handles resolved to them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engram.adapters.llm.anthropic_messages import AnthropicProvider
from engram.adapters.llm.openai_chat import OpenAIChatProvider
from engram.adapters.llm.registry import ProviderNotConfiguredError, ProviderRegistry


def test_only_configured_providers_exist() -> None:
    registry = ProviderRegistry.from_environment(
        {"OPENAI_API_KEY": "sk-test", "OLLAMA_BASE_URL": "http://localhost:11434/"}
    )
    assert registry.names == ["ollama", "openai"]


def test_handles_resolve_to_provider_and_model() -> None:
    registry = ProviderRegistry.from_environment(
        {"ANTHROPIC_API_KEY": "k", "OPENROUTER_API_KEY": "k"}
    )
    provider, model = registry.resolve("anthropic/claude-sonnet-4")
    assert isinstance(provider, AnthropicProvider) and model == "claude-sonnet-4"
    # Everything after the first slash is the provider's own model name.
    provider, model = registry.resolve("openrouter/meta-llama/llama-3.1-8b-instruct")
    assert isinstance(provider, OpenAIChatProvider)
    assert model == "meta-llama/llama-3.1-8b-instruct"
    assert provider.settings.base_url == "https://openrouter.ai/api/v1"
    assert provider.settings.max_tokens_field == "max_tokens"


def test_local_servers_need_only_a_url() -> None:
    registry = ProviderRegistry.from_environment(
        {"OLLAMA_BASE_URL": "http://localhost:11434/", "VLLM_API_BASE": "http://gpu:8000/v1"}
    )
    ollama, _ = registry.resolve("ollama/llama3.2")
    vllm, _ = registry.resolve("vllm/qwen")
    assert isinstance(ollama, OpenAIChatProvider) and isinstance(vllm, OpenAIChatProvider)
    assert ollama.settings.base_url == "http://localhost:11434/v1"
    assert vllm.settings.base_url == "http://gpu:8000/v1"


def test_openai_uses_max_completion_tokens() -> None:
    provider, _ = ProviderRegistry.from_environment({"OPENAI_API_KEY": "k"}).resolve("openai/x")
    assert isinstance(provider, OpenAIChatProvider)
    assert provider.settings.max_tokens_field == "max_completion_tokens"


@pytest.mark.parametrize("handle", ["groq/llama", "openai", "openai/", "nope/model"])
def test_unconfigured_or_malformed_handles_say_what_to_set(handle: str) -> None:
    registry = ProviderRegistry.from_environment({"OPENAI_API_KEY": "k"})
    with pytest.raises(ProviderNotConfiguredError) as refused:
        registry.resolve(handle)
    assert "configured: openai" in str(refused.value)
    assert refused.value.reason == "PROVIDER_NOT_CONFIGURED"


def test_the_sdks_are_imported_on_demand_and_by_the_warm_up() -> None:
    """Importing the registry leaves the SDKs alone; the warm-up (a thread in serve) loads them."""
    script = (
        "import sys\n"
        "from engram.adapters.llm import registry\n"
        "assert 'anthropic' not in sys.modules and 'openai' not in sys.modules\n"
        "registry.import_provider_sdks()\n"
        "assert 'anthropic' in sys.modules and 'openai' in sys.modules\n"
        "assert all(module in sys.modules for module in registry.SDK_ADAPTER_MODULES)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
