"""ProviderService: an organization's LLM providers, and the models it can use."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from engram.api.convert import changed_fields, resource_id, timestamp
from engram.rpc.application import Application
from engram.rpc.context import current_caller
from engram.services.providers import (
    ENVIRONMENT,
    ORGANIZATION,
    ModelEntry,
    ProviderAnswer,
    ProviderService,
    api_key_hint,
    has_api_key,
    provider_etag,
)
from engram.store.ids import IdPrefix
from engram.store.models import Provider
from engram.v1 import provider_pb2, provider_service_pb2, provider_service_pb2_grpc

# The proto's provider types and the type names the registry knows them by.
TYPE_TO_DOMAIN = {
    provider_pb2.PROVIDER_TYPE_OPENAI: "openai",
    provider_pb2.PROVIDER_TYPE_ANTHROPIC: "anthropic",
    provider_pb2.PROVIDER_TYPE_AZURE_OPENAI: "azure",
    provider_pb2.PROVIDER_TYPE_GROQ: "groq",
    provider_pb2.PROVIDER_TYPE_OPENROUTER: "openrouter",
    provider_pb2.PROVIDER_TYPE_TOGETHER: "together",
    provider_pb2.PROVIDER_TYPE_OLLAMA: "ollama",
    provider_pb2.PROVIDER_TYPE_VLLM: "vllm",
    provider_pb2.PROVIDER_TYPE_LM_STUDIO: "lmstudio",
    provider_pb2.PROVIDER_TYPE_LLAMA_CPP: "llamacpp",
    provider_pb2.PROVIDER_TYPE_OPENAI_COMPATIBLE: "openai_compatible",
}
TYPE_TO_PROTO = {name: value for value, name in TYPE_TO_DOMAIN.items()}
SOURCE_TO_PROTO = {
    ENVIRONMENT: provider_service_pb2.PROVIDER_SOURCE_ENVIRONMENT,
    ORGANIZATION: provider_service_pb2.PROVIDER_SOURCE_ORGANIZATION,
}

PROVIDER_READERS: dict[str, Any] = {
    "provider_name": lambda p: p.provider_name,
    # An unknown number becomes "" and is refused as a missing type.
    "provider_type": lambda p: TYPE_TO_DOMAIN.get(p.provider_type, ""),
    "base_url": lambda p: p.base_url,
    "api_key": lambda p: p.api_key,
}


def provider_to_proto(row: Provider) -> provider_pb2.Provider:
    """The resource as clients see it: never the key, only whether one is set and its hint."""
    return provider_pb2.Provider(
        name=f"providers/{row.id}",
        id=row.id,
        provider_name=row.name,
        provider_type=TYPE_TO_PROTO.get(row.provider_type, provider_pb2.PROVIDER_TYPE_UNSPECIFIED),
        base_url=row.base_url or "",
        has_api_key=has_api_key(row),
        api_key_hint=api_key_hint(row),
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
        etag=provider_etag(row),
    )


def provider_id_of(name: str, field: str) -> str:
    return resource_id(name, "providers", IdPrefix.PROVIDER, field)


def _name_of(provider_id: str) -> str:
    return f"providers/{provider_id}" if provider_id else ""


def model_to_proto(entry: ModelEntry) -> provider_service_pb2.Model:
    return provider_service_pb2.Model(
        handle=entry.handle,
        model=entry.model,
        provider_name=entry.provider_name,
        provider=_name_of(entry.provider_id),
        source=SOURCE_TO_PROTO[entry.source],
        provider_type=TYPE_TO_PROTO.get(
            entry.provider_type, provider_pb2.PROVIDER_TYPE_UNSPECIFIED
        ),
    )


def answer_to_proto(answer: ProviderAnswer) -> provider_service_pb2.ProviderModels:
    return provider_service_pb2.ProviderModels(
        provider_name=answer.provider_name,
        provider=_name_of(answer.provider_id),
        source=SOURCE_TO_PROTO[answer.source],
        provider_type=TYPE_TO_PROTO.get(
            answer.provider_type, provider_pb2.PROVIDER_TYPE_UNSPECIFIED
        ),
        model_count=answer.model_count,
        error_reason=answer.error_reason,
        error_message=answer.error_message,
    )


class ProviderServicer(provider_service_pb2_grpc.ProviderServiceServicer):
    def __init__(self, app: Application) -> None:
        self.app = app

    @property
    def service(self) -> ProviderService:
        return self.app.services.runtime_providers

    async def CreateProvider(
        self,
        request: provider_service_pb2.CreateProviderRequest,
        context: grpc.aio.ServicerContext,
    ) -> provider_pb2.Provider:
        values = {name: read(request.provider) for name, read in PROVIDER_READERS.items()}
        row = await self.service.create(current_caller(), values, request.request_id)
        return provider_to_proto(row)

    async def GetProvider(
        self, request: provider_service_pb2.GetProviderRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.Provider:
        row = await self.service.get(current_caller(), provider_id_of(request.name, "name"))
        return provider_to_proto(row)

    async def ListProviders(
        self,
        request: provider_service_pb2.ListProvidersRequest,
        context: grpc.aio.ServicerContext,
    ) -> provider_service_pb2.ListProvidersResponse:
        rows, token = await self.service.list_page(
            current_caller(), page_size=request.page_size, page_token=request.page_token
        )
        return provider_service_pb2.ListProvidersResponse(
            providers=[provider_to_proto(row) for row in rows], next_page_token=token
        )

    async def UpdateProvider(
        self,
        request: provider_service_pb2.UpdateProviderRequest,
        context: grpc.aio.ServicerContext,
    ) -> provider_pb2.Provider:
        provider_id = provider_id_of(request.provider.name, "provider.name")
        changes = changed_fields(request.provider, request.update_mask, PROVIDER_READERS)
        row = await self.service.update(
            current_caller(), provider_id, changes, request.provider.etag
        )
        return provider_to_proto(row)

    async def DeleteProvider(
        self,
        request: provider_service_pb2.DeleteProviderRequest,
        context: grpc.aio.ServicerContext,
    ) -> empty_pb2.Empty:
        await self.service.delete(
            current_caller(), provider_id_of(request.name, "name"), request.etag
        )
        return empty_pb2.Empty()

    async def ListModels(
        self, request: provider_service_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> provider_service_pb2.ListModelsResponse:
        listing = await self.service.list_models(current_caller(), request.provider_name)
        return provider_service_pb2.ListModelsResponse(
            models=[model_to_proto(entry) for entry in listing.models],
            providers=[answer_to_proto(answer) for answer in listing.providers],
        )
