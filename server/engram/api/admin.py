"""AdminService: organizations, users and API keys (admin callers only)."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from engram.api.convert import nested_id, resource_id, timestamp
from engram.rpc.application import Application
from engram.rpc.context import current_caller
from engram.services.admin import AdminService
from engram.services.auth import ApiKeyAuthenticator
from engram.services.errors import InvalidArgumentError
from engram.store.ids import IdPrefix
from engram.store.models import ApiKey, Organization, User
from engram.v1 import admin_pb2, admin_service_pb2, admin_service_pb2_grpc


def organization_to_proto(organization: Organization) -> admin_pb2.Organization:
    return admin_pb2.Organization(
        name=f"organizations/{organization.id}",
        id=organization.id,
        display_name=organization.name,
        create_time=timestamp(organization.created_at),
    )


def user_to_proto(user: User) -> admin_pb2.User:
    return admin_pb2.User(
        name=f"organizations/{user.organization_id}/users/{user.id}",
        id=user.id,
        display_name=user.name,
        create_time=timestamp(user.created_at),
    )


def api_key_to_proto(key: ApiKey, secret: str = "") -> admin_pb2.ApiKey:
    return admin_pb2.ApiKey(
        name=f"organizations/{key.organization_id}/apiKeys/{key.id}",
        id=key.id,
        display_name=key.name,
        user=f"organizations/{key.organization_id}/users/{key.user_id}",
        admin=key.is_admin,
        display_prefix=key.display_prefix,
        secret=secret,
        create_time=timestamp(key.created_at),
        last_use_time=timestamp(key.last_used_at),
    )


def organization_id_of(name: str, field: str) -> str:
    return resource_id(name, "organizations", IdPrefix.ORGANIZATION, field)


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(self, app: Application) -> None:
        self.app = app

    @property
    def service(self) -> AdminService:
        return self.app.services.admin

    @property
    def authenticator(self) -> ApiKeyAuthenticator:
        return self.app.services.authenticator

    async def CreateOrganization(
        self,
        request: admin_service_pb2.CreateOrganizationRequest,
        context: grpc.aio.ServicerContext,
    ) -> admin_pb2.Organization:
        organization = await self.service.create_organization(
            current_caller(), request.organization.display_name, request.request_id
        )
        return organization_to_proto(organization)

    async def GetOrganization(
        self, request: admin_service_pb2.GetOrganizationRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.Organization:
        organization = await self.service.get_organization(organization_id_of(request.name, "name"))
        return organization_to_proto(organization)

    async def ListOrganizations(
        self,
        request: admin_service_pb2.ListOrganizationsRequest,
        context: grpc.aio.ServicerContext,
    ) -> admin_service_pb2.ListOrganizationsResponse:
        organizations, token = await self.service.list_organizations(
            page_size=request.page_size, page_token=request.page_token
        )
        return admin_service_pb2.ListOrganizationsResponse(
            organizations=[organization_to_proto(o) for o in organizations], next_page_token=token
        )

    async def DeleteOrganization(
        self,
        request: admin_service_pb2.DeleteOrganizationRequest,
        context: grpc.aio.ServicerContext,
    ) -> empty_pb2.Empty:
        key_hashes = await self.service.delete_organization(
            organization_id_of(request.name, "name")
        )
        for key_hash in key_hashes:
            self.authenticator.forget(key_hash)
        return empty_pb2.Empty()

    async def CreateUser(
        self, request: admin_service_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.User:
        user = await self.service.create_user(
            current_caller(),
            organization_id_of(request.parent, "parent"),
            request.user.display_name,
            request.request_id,
        )
        return user_to_proto(user)

    async def ListUsers(
        self, request: admin_service_pb2.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> admin_service_pb2.ListUsersResponse:
        users, token = await self.service.list_users(
            organization_id_of(request.parent, "parent"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return admin_service_pb2.ListUsersResponse(
            users=[user_to_proto(user) for user in users], next_page_token=token
        )

    async def DeleteUser(
        self, request: admin_service_pb2.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        organization_id, user_id = nested_id(
            request.name, "organizations", IdPrefix.ORGANIZATION, "users", IdPrefix.USER, "name"
        )
        for key_hash in await self.service.delete_user(organization_id, user_id):
            self.authenticator.forget(key_hash)
        return empty_pb2.Empty()

    async def CreateApiKey(
        self, request: admin_service_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ApiKey:
        organization_id = organization_id_of(request.parent, "parent")
        user_org, user_id = nested_id(
            request.api_key.user,
            "organizations",
            IdPrefix.ORGANIZATION,
            "users",
            IdPrefix.USER,
            "api_key.user",
        )
        if user_org != organization_id:
            raise InvalidArgumentError.field("api_key.user", "must be a user of the parent")
        issued = await self.service.create_api_key(
            organization_id,
            user_id,
            display_name=request.api_key.display_name,
            admin=request.api_key.admin,
            request_id=request.request_id,
        )
        return api_key_to_proto(issued.key, issued.secret)

    async def ListApiKeys(
        self, request: admin_service_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> admin_service_pb2.ListApiKeysResponse:
        keys, token = await self.service.list_api_keys(
            organization_id_of(request.parent, "parent"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return admin_service_pb2.ListApiKeysResponse(
            api_keys=[api_key_to_proto(key) for key in keys], next_page_token=token
        )

    async def DeleteApiKey(
        self, request: admin_service_pb2.DeleteApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        organization_id, key_id = nested_id(
            request.name,
            "organizations",
            IdPrefix.ORGANIZATION,
            "apiKeys",
            IdPrefix.API_KEY,
            "name",
        )
        self.authenticator.forget(await self.service.delete_api_key(organization_id, key_id))
        return empty_pb2.Empty()
