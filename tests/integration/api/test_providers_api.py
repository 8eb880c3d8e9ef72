"""ProviderService through the stubs: run-time providers, encrypted keys, ListModels, and turns."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from sqlalchemy import text

from engram.adapters.llm.openai_chat import OpenAIChatProvider
from engram.adapters.llm.registry import (
    PROVIDER_KINDS,
    ProviderConfig,
    ProviderNotConfiguredError,
    ProviderRegistry,
    build_provider,
)
from engram.config.settings import Settings
from engram.rpc.errors import reason_of, unpack_detail
from engram.secrets import KeyRing, MasterKey
from engram.services.admin import AdminService
from engram.services.caller import Caller
from engram.services.providers import ProviderService
from engram.store.database import Database
from engram.store.models import Provider
from engram.store.secret_columns import read_secret
from engram.v1 import (
    agent_pb2,
    agent_service_pb2,
    message_service_pb2,
    provider_pb2,
    provider_service_pb2,
    run_pb2,
)
from support.api import ApiHarness, Client, rich_status, running_api
from support.fake_provider import DEFAULT_ANTHROPIC_MODELS, FakeProvider, Reply
from support.llm import fake_registry

OPENAI = provider_pb2.PROVIDER_TYPE_OPENAI
KEY = "sk-org-a-secret-7f3c"
ORGANIZATION = provider_service_pb2.PROVIDER_SOURCE_ORGANIZATION
ENVIRONMENT = provider_service_pb2.PROVIDER_SOURCE_ENVIRONMENT


@pytest.fixture(scope="session")
def keyring() -> KeyRing:
    # The ``settings`` fixture's encryption key, derived once for the session.
    return KeyRing(MasterKey.from_passphrase("test-key"))


@pytest.fixture
async def api(
    settings: Settings, database: Database, keyring: KeyRing, fake_provider: FakeProvider
) -> AsyncIterator[ApiHarness]:
    """A server whose environment configures ``openai`` (at the fake) and that can store keys."""
    registry = fake_registry(fake_provider)
    try:
        async with running_api(settings, database, registry, keyring=keyring) as harness:
            yield harness
    finally:
        await registry.close()


async def fails(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    bad_request = unpack_detail(rich_status(error), error_details_pb2.BadRequest)
    assert bad_request is not None, f"no BadRequest in {error.details()}"
    return {v.field: v.description for v in bad_request.field_violations}


async def create(
    client: Client,
    name: str = "myprov",
    base_url: str = "",
    api_key: str = KEY,
    provider_type: int = OPENAI,
    request_id: str = "",
) -> provider_pb2.Provider:
    return await client.providers.CreateProvider(
        provider_service_pb2.CreateProviderRequest(
            provider=provider_pb2.Provider(
                provider_name=name, provider_type=provider_type, base_url=base_url, api_key=api_key
            ),
            request_id=request_id,
        )
    )


async def new_agent(client: Client, model: str) -> str:
    agent = await client.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="pal", model=model))
    )
    return str(agent.name)


async def send(
    client: Client, agent: str, text: str = "Hi!"
) -> message_service_pb2.SendMessageResponse:
    return await client.messages.SendMessage(
        message_service_pb2.SendMessageRequest(agent=agent, text=text)
    )


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was just released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_create_get_list_update_delete(api: ApiHarness, fake_provider: FakeProvider) -> None:
    created = await create(api.org_a, base_url=fake_provider.openai_base_url)

    assert created.name == f"providers/{created.id}" and created.id.startswith("provider-")
    assert (created.provider_name, created.provider_type) == ("myprov", OPENAI)
    assert created.base_url == fake_provider.openai_base_url
    assert created.has_api_key and created.api_key_hint == KEY[-4:]
    assert created.etag and created.create_time.seconds > 0
    got = await api.org_a.providers.GetProvider(
        provider_service_pb2.GetProviderRequest(name=created.name)
    )
    assert got == created
    second = await create(
        api.org_a, "local", "http://localhost:11434", "", provider_pb2.PROVIDER_TYPE_OLLAMA
    )
    assert not second.has_api_key and second.api_key_hint == ""

    first_page = await api.org_a.providers.ListProviders(
        provider_service_pb2.ListProvidersRequest(page_size=1)
    )
    assert [p.provider_name for p in first_page.providers] == ["local"]
    rest = await api.org_a.providers.ListProviders(
        provider_service_pb2.ListProvidersRequest(
            page_size=1, page_token=first_page.next_page_token
        )
    )
    assert [p.provider_name for p in rest.providers] == ["myprov"] and not rest.next_page_token

    await api.org_a.providers.DeleteProvider(
        provider_service_pb2.DeleteProviderRequest(name=second.name, etag=second.etag)
    )
    error = await fails(
        api.org_a.providers.GetProvider(provider_service_pb2.GetProviderRequest(name=second.name))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(rich_status(error)) == "NOT_FOUND"


async def test_create_is_idempotent_with_a_request_id(api: ApiHarness) -> None:
    request_id = str(uuid.uuid4())
    first = await create(api.org_a, request_id=request_id)
    retried = await create(api.org_a, request_id=request_id)

    assert retried == first
    listed = await api.org_a.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
    assert [p.name for p in listed.providers] == [first.name]
    # Without the request id, the same create is a name clash.
    error = await fails(create(api.org_a))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason_of(rich_status(error)) == "ALREADY_EXISTS"
    assert "myprov" in (error.details() or "")


async def test_update_changes_only_the_masked_fields_and_checks_the_etag(api: ApiHarness) -> None:
    created = await create(
        api.org_a,
        "gen",
        "http://gpu-a:8000/v1",
        "old-key-0000-aaaa",
        provider_pb2.PROVIDER_TYPE_OPENAI_COMPATIBLE,
    )
    changes = provider_pb2.Provider(
        name=created.name,
        base_url="http://gpu-b:8000/v1",
        provider_name="renamed",
        etag=created.etag,
    )

    updated = await api.org_a.providers.UpdateProvider(
        provider_service_pb2.UpdateProviderRequest(
            provider=changes, update_mask=field_mask_pb2.FieldMask(paths=["base_url"])
        )
    )

    assert updated.base_url == "http://gpu-b:8000/v1"
    assert updated.provider_name == "gen" and updated.api_key_hint == "aaaa"
    assert updated.etag != created.etag
    # The etag read before the update is stale now, for updates and deletes alike.
    stale = await fails(
        api.org_a.providers.UpdateProvider(
            provider_service_pb2.UpdateProviderRequest(
                provider=changes, update_mask=field_mask_pb2.FieldMask(paths=["provider_name"])
            )
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    assert reason_of(rich_status(stale)) == "CONCURRENT_UPDATE"
    stale_delete = await fails(
        api.org_a.providers.DeleteProvider(
            provider_service_pb2.DeleteProviderRequest(name=created.name, etag=created.etag)
        )
    )
    assert stale_delete.code() == grpc.StatusCode.ABORTED

    # Naming api_key in the mask with no value removes the key.
    cleared = await api.org_a.providers.UpdateProvider(
        provider_service_pb2.UpdateProviderRequest(
            provider=provider_pb2.Provider(name=created.name, etag=updated.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["api_key"]),
        )
    )
    assert not cleared.has_api_key and cleared.api_key_hint == ""
    bad_path = await fails(
        api.org_a.providers.UpdateProvider(
            provider_service_pb2.UpdateProviderRequest(
                provider=provider_pb2.Provider(name=created.name),
                update_mask=field_mask_pb2.FieldMask(paths=["has_api_key"]),
            )
        )
    )
    assert bad_path.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "update_mask" in violations(bad_path)


async def test_the_key_is_never_returned_and_is_stored_as_ciphertext(
    api: ApiHarness, keyring: KeyRing
) -> None:
    created = await create(api.org_a)
    listed = await api.org_a.providers.ListProviders(provider_service_pb2.ListProvidersRequest())

    for shown in (created, listed.providers[0]):
        assert shown.api_key == "" and KEY not in str(shown)
    async with api.database.engine.connect() as connection:
        stored = (
            await connection.execute(
                text("SELECT api_key_enc FROM providers WHERE id = :id"), {"id": created.id}
            )
        ).scalar_one()
    assert stored.startswith("engram:") and KEY not in stored and KEY[-4:] not in stored
    async with api.database.read(api.org_a.caller.organization_id) as session:
        row = await session.get(Provider, created.id)
        assert row is not None and read_secret(keyring, row, "api_key_enc") == KEY


async def test_bad_providers_are_refused_field_by_field(api: ApiHarness) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "my/prov"}, "provider.provider_name"),
        ({"name": "MyProv"}, "provider.provider_name"),
        ({"name": ""}, "provider.provider_name"),
        ({"provider_type": provider_pb2.PROVIDER_TYPE_UNSPECIFIED}, "provider.provider_type"),
        ({"base_url": "ftp://example.com"}, "provider.base_url"),
        ({"api_key": ""}, "provider.api_key"),
        ({"provider_type": provider_pb2.PROVIDER_TYPE_OLLAMA, "api_key": ""}, "provider.base_url"),
    ]
    for arguments, field in cases:
        error = await fails(create(api.org_a, **arguments))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, arguments
        assert field in violations(error), (arguments, violations(error))
    listed = await api.org_a.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
    assert list(listed.providers) == []


async def test_without_an_encryption_key_a_key_is_not_stored(
    settings: Settings, database: Database
) -> None:
    async with running_api(settings, database) as harness:
        error = await fails(create(harness.org_a))
        local = await create(
            harness.org_a,
            "local",
            "http://localhost:1234/v1",
            "",
            provider_pb2.PROVIDER_TYPE_LM_STUDIO,
        )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(rich_status(error)) == "ENCRYPTION_KEY_MISSING"
    assert not local.has_api_key


async def test_organizations_cannot_see_or_use_each_others_providers(
    api: ApiHarness, fake_provider: FakeProvider
) -> None:
    created = await create(api.org_a, base_url=fake_provider.openai_base_url)
    calls: list[Awaitable[Any]] = [
        api.org_b.providers.GetProvider(provider_service_pb2.GetProviderRequest(name=created.name)),
        api.org_b.providers.UpdateProvider(
            provider_service_pb2.UpdateProviderRequest(
                provider=provider_pb2.Provider(name=created.name, base_url="http://evil:1/v1"),
                update_mask=field_mask_pb2.FieldMask(paths=["base_url"]),
            )
        ),
        api.org_b.providers.DeleteProvider(
            provider_service_pb2.DeleteProviderRequest(name=created.name)
        ),
    ]
    for call in calls:
        error = await fails(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await api.org_b.providers.ListProviders(provider_service_pb2.ListProvidersRequest())
    assert list(listed.providers) == []
    models = await api.org_b.providers.ListModels(provider_service_pb2.ListModelsRequest())
    assert {m.provider_name for m in models.models} == {"openai"}

    agent_b = await new_agent(api.org_b, "myprov/gpt-test")
    error = await fails(send(api.org_b, agent_b))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(rich_status(error)) == "PROVIDER_NOT_CONFIGURED"
    assert [r for r in fake_provider.requests if r.method == "POST"] == []
    # Org A's provider is untouched and works for org A.
    fake_provider.script(Reply(text="Hello from myprov."))
    agent_a = await new_agent(api.org_a, "myprov/gpt-test")
    assert (await send(api.org_a, agent_a)).run.status == run_pb2.RUN_STATUS_COMPLETED


async def test_a_turn_runs_through_a_provider_configured_at_run_time(
    api: ApiHarness, fake_provider: FakeProvider
) -> None:
    created = await create(api.org_a, base_url=fake_provider.openai_base_url)
    agent = await new_agent(api.org_a, "myprov/gpt-test")
    fake_provider.script(Reply(text="Hi, I run on myprov.", prompt_tokens=20, completion_tokens=6))

    response = await send(api.org_a, agent)

    assert response.run.status == run_pb2.RUN_STATUS_COMPLETED
    assert response.messages[-1].text == "Hi, I run on myprov."
    request = fake_provider.last_request
    assert request.path == "/openai/v1/chat/completions"
    assert request.body is not None and request.body["model"] == "gpt-test"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    steps = await api.org_a.runs.ListRunSteps(
        message_service_pb2.ListRunStepsRequest(parent=response.run.name)
    )
    assert [(s.provider, s.model) for s in steps.steps] == [("myprov", "gpt-test")]

    # A new key takes effect on the next turn.
    await api.org_a.providers.UpdateProvider(
        provider_service_pb2.UpdateProviderRequest(
            provider=provider_pb2.Provider(name=created.name, api_key="sk-rotated-key-9999"),
        )
    )
    fake_provider.script(Reply(text="Still here."))
    await send(api.org_a, agent, "Again")
    assert fake_provider.last_request.headers["authorization"] == "Bearer sk-rotated-key-9999"


async def test_an_organization_provider_overrides_the_environment_one_of_the_same_name(
    api: ApiHarness, fake_provider: FakeProvider
) -> None:
    await create(api.org_a, "openai", fake_provider.openai_base_url, "sk-org-a-own-key-1234")
    fake_provider.script(Reply(text="a"), Reply(text="b"))

    await send(api.org_a, await new_agent(api.org_a, "openai/gpt-test"))
    assert fake_provider.last_request.headers["authorization"] == "Bearer sk-org-a-own-key-1234"
    await send(api.org_b, await new_agent(api.org_b, "openai/gpt-test"))
    # fake_registry configures the environment's openai with the key "k".
    assert fake_provider.last_request.headers["authorization"] == "Bearer k"

    listed = await api.org_a.providers.ListModels(provider_service_pb2.ListModelsRequest())
    assert [(p.provider_name, p.source) for p in listed.providers] == [("openai", ORGANIZATION)]


async def test_deleting_a_provider_makes_the_next_turn_fail_precisely(
    api: ApiHarness, fake_provider: FakeProvider
) -> None:
    created = await create(api.org_a, base_url=fake_provider.openai_base_url)
    agent = await new_agent(api.org_a, "myprov/gpt-test")
    fake_provider.script(Reply(text="Before."))
    await send(api.org_a, agent)

    await api.org_a.providers.DeleteProvider(
        provider_service_pb2.DeleteProviderRequest(name=created.name)
    )
    error = await fails(send(api.org_a, agent, "After?"))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rich_status(error)
    assert reason_of(status) == "PROVIDER_NOT_CONFIGURED"
    info = unpack_detail(status, error_details_pb2.ErrorInfo)
    assert info is not None and info.metadata["provider"] == "myprov"
    assert "myprov/gpt-test" in (error.details() or "")
    assert len(fake_provider.requests) == 1


async def test_list_models_asks_every_provider_and_reports_the_ones_that_fail(
    api: ApiHarness, fake_provider: FakeProvider
) -> None:
    fake_provider.openai_models = ["gpt-test", "gpt-other"]
    myprov = await create(api.org_a, base_url=fake_provider.openai_base_url)
    await create(
        api.org_a,
        "claude",
        fake_provider.anthropic_base_url,
        "sk-ant-test-key-5678",
        provider_pb2.PROVIDER_TYPE_ANTHROPIC,
    )
    down = await create(
        api.org_a, "down", closed_port_url(), "", provider_pb2.PROVIDER_TYPE_OPENAI_COMPATIBLE
    )

    listed = await api.org_a.providers.ListModels(provider_service_pb2.ListModelsRequest())

    handles = [m.handle for m in listed.models]
    assert handles == sorted(
        [f"claude/{name}" for name in DEFAULT_ANTHROPIC_MODELS]
        + ["myprov/gpt-other", "myprov/gpt-test", "openai/gpt-other", "openai/gpt-test"]
    )
    mine = next(m for m in listed.models if m.handle == "myprov/gpt-test")
    assert (mine.model, mine.provider_name, mine.provider, mine.source) == (
        "gpt-test",
        "myprov",
        myprov.name,
        ORGANIZATION,
    )
    environment = next(m for m in listed.models if m.handle == "openai/gpt-test")
    assert (environment.provider, environment.source) == ("", ENVIRONMENT)
    answers = {p.provider_name: p for p in listed.providers}
    assert [p.provider_name for p in listed.providers] == ["claude", "down", "myprov", "openai"]
    assert answers["claude"].model_count == len(DEFAULT_ANTHROPIC_MODELS)
    assert answers["claude"].provider_type == provider_pb2.PROVIDER_TYPE_ANTHROPIC
    assert answers["down"].model_count == 0 and answers["down"].provider == down.name
    assert answers["down"].error_reason == "PROVIDER_UNAVAILABLE"
    assert answers["down"].error_message
    assert all(not answers[name].error_reason for name in ("claude", "myprov", "openai"))
    anthropic_calls = [r for r in fake_provider.requests if r.api == "anthropic"]
    assert anthropic_calls, "the anthropic provider was not asked"
    # The SDK sends the key as x-api-key or as a bearer token, depending on its version.
    headers = anthropic_calls[-1].headers
    assert "sk-ant-test-key-5678" in headers.get("x-api-key", "") + headers.get("authorization", "")

    only = await api.org_a.providers.ListModels(
        provider_service_pb2.ListModelsRequest(provider_name="myprov")
    )
    assert [m.handle for m in only.models] == ["myprov/gpt-other", "myprov/gpt-test"]
    assert [p.provider_name for p in only.providers] == ["myprov"]


async def test_clients_are_reused_until_the_provider_changes(
    database: Database, keyring: KeyRing, fake_provider: FakeProvider
) -> None:
    admin_org = await _organization(database)
    service = ProviderService(database, keyring, ProviderRegistry({}))
    caller = Caller(admin_org, "")
    try:
        row = await service.create(
            caller,
            {
                "provider_name": "myprov",
                "provider_type": "openai",
                "base_url": fake_provider.openai_base_url,
                "api_key": KEY,
            },
            "",
        )
        first, model = await service.resolve_model(admin_org, "myprov/gpt-test")
        again, _ = await service.resolve_model(admin_org, "myprov/gpt-test")
        assert again is first and model == "gpt-test"

        await service.update(caller, row.id, {"base_url": "http://elsewhere:9/v1"}, "")
        changed, _ = await service.resolve_model(admin_org, "myprov/gpt-test")
        assert changed is not first
    finally:
        await service.close()


async def _organization(database: Database) -> str:
    org = await AdminService(database).create_organization(Caller("", "", is_admin=True), "o", "")
    return str(org.id)


async def test_another_process_sees_a_deletion_once_its_cached_rows_expire(
    database: Database, keyring: KeyRing, fake_provider: FakeProvider
) -> None:
    organization = await _organization(database)
    caller = Caller(organization, "")
    writer = ProviderService(database, keyring, ProviderRegistry({}))
    # Another process: it reads the rows again on every resolution (a TTL of 0).
    other = ProviderService(database, keyring, ProviderRegistry({}), rows_ttl=0)
    try:
        row = await writer.create(
            caller,
            {
                "provider_name": "myprov",
                "provider_type": "openai",
                "base_url": fake_provider.openai_base_url,
                "api_key": KEY,
            },
            "",
        )
        await other.resolve_model(organization, "myprov/gpt-test")

        await writer.delete(caller, row.id, "")

        with pytest.raises(ProviderNotConfiguredError):
            await other.resolve_model(organization, "myprov/gpt-test")
        with pytest.raises(ProviderNotConfiguredError):
            await writer.resolve_model(organization, "myprov/gpt-test")
    finally:
        await writer.close()
        await other.close()


def test_run_time_configurations_build_like_the_environment_ones() -> None:
    ollama = build_provider(
        ProviderConfig("local", PROVIDER_KINDS["ollama"], "", "http://h:11434/")
    )
    generic = build_provider(
        ProviderConfig("gen", PROVIDER_KINDS["openai_compatible"], "", "http://h:8000/v1")
    )
    groq = build_provider(ProviderConfig("fast", PROVIDER_KINDS["groq"], "gsk-key", ""))

    assert isinstance(ollama, OpenAIChatProvider) and isinstance(generic, OpenAIChatProvider)
    assert isinstance(groq, OpenAIChatProvider)
    assert (ollama.name, ollama.settings.base_url) == ("local", "http://h:11434/v1")
    assert generic.settings.max_tokens_field == "max_tokens"
    assert groq.settings.base_url == "https://api.groq.com/openai/v1"
