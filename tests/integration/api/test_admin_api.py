"""AdminService through the generated stubs: organizations, users, and API keys that really work."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from engram.rpc.errors import reason_of, unpack_detail
from engram.services.caller import Caller
from engram.v1 import admin_pb2, admin_service_pb2, block_pb2, block_service_pb2
from support.api import ApiHarness, Client, rich_status


async def fails(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    bad_request = unpack_detail(rich_status(error), error_details_pb2.BadRequest)
    assert bad_request is not None, f"no BadRequest in {error.details()}"
    return {v.field: v.description for v in bad_request.field_violations}


async def create_organization(
    api: ApiHarness, display_name: str, request_id: str = ""
) -> admin_pb2.Organization:
    organization: admin_pb2.Organization = await api.org_a.admin.CreateOrganization(
        admin_service_pb2.CreateOrganizationRequest(
            organization=admin_pb2.Organization(display_name=display_name),
            request_id=request_id,
        )
    )
    return organization


async def create_user(
    api: ApiHarness, organization: str, display_name: str = "someone", request_id: str = ""
) -> admin_pb2.User:
    user: admin_pb2.User = await api.org_a.admin.CreateUser(
        admin_service_pb2.CreateUserRequest(
            parent=organization,
            user=admin_pb2.User(display_name=display_name),
            request_id=request_id,
        )
    )
    return user


async def create_key(
    api: ApiHarness,
    organization: str,
    user: str,
    *,
    admin: bool = False,
    display_name: str = "",
    request_id: str = "",
) -> admin_pb2.ApiKey:
    key: admin_pb2.ApiKey = await api.org_a.admin.CreateApiKey(
        admin_service_pb2.CreateApiKeyRequest(
            parent=organization,
            api_key=admin_pb2.ApiKey(user=user, admin=admin, display_name=display_name),
            request_id=request_id,
        )
    )
    return key


def client_for(
    api: ApiHarness, key: admin_pb2.ApiKey, organization: admin_pb2.Organization
) -> Client:
    user_id = key.user.rsplit("/", 1)[-1]
    caller = Caller(organization.id, user_id, is_admin=key.admin, api_key_id=key.id)
    return Client.connect(api.channel, caller, key.secret)


async def list_keys(api: ApiHarness, organization: str) -> list[admin_pb2.ApiKey]:
    response = await api.org_a.admin.ListApiKeys(
        admin_service_pb2.ListApiKeysRequest(parent=organization)
    )
    return list(response.api_keys)


async def block_count(client: Client) -> int:
    response = await client.blocks.ListBlocks(block_service_pb2.ListBlocksRequest())
    return len(response.blocks)


async def new_member(api: ApiHarness, name: str = "acme") -> tuple[admin_pb2.Organization, Client]:
    """A fresh organization with one user and a working non-admin key."""
    organization = await create_organization(api, name)
    user = await create_user(api, organization.name)
    key = await create_key(api, organization.name, user.name)
    return organization, client_for(api, key, organization)


# --------------------------------------------------------------------------- organizations


async def test_create_and_get_an_organization(api: ApiHarness) -> None:
    created = await create_organization(api, "  Acme Corp  ")

    assert created.id.startswith("org-")
    assert created.name == f"organizations/{created.id}"
    assert created.display_name == "Acme Corp"
    assert created.create_time.seconds > 0
    fetched = await api.org_a.admin.GetOrganization(
        admin_service_pb2.GetOrganizationRequest(name=created.name)
    )
    assert fetched == created


async def test_create_organization_with_a_bad_name_is_invalid(api: ApiHarness) -> None:
    for display_name in ("", "   ", "x" * 201):
        error = await fails(create_organization(api, display_name))

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, display_name
        assert "organization.display_name" in violations(error)


async def test_create_organization_with_a_request_id_is_idempotent(api: ApiHarness) -> None:
    request_id = str(uuid.uuid4())

    first = await create_organization(api, "Acme", request_id)
    second = await create_organization(api, "Acme again", request_id)

    assert second == first
    listed = await api.org_a.admin.ListOrganizations(admin_service_pb2.ListOrganizationsRequest())
    assert [o.display_name for o in listed.organizations].count("Acme") == 1
    assert "Acme again" not in [o.display_name for o in listed.organizations]


async def test_get_a_missing_organization_is_not_found(api: ApiHarness) -> None:
    error = await fails(
        api.org_a.admin.GetOrganization(
            admin_service_pb2.GetOrganizationRequest(name=f"organizations/org-{uuid.uuid4()}")
        )
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(rich_status(error)) == "NOT_FOUND"


async def test_get_an_organization_with_a_malformed_name_is_invalid(api: ApiHarness) -> None:
    error = await fails(
        api.org_a.admin.GetOrganization(admin_service_pb2.GetOrganizationRequest(name="org-1"))
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in violations(error)


async def test_list_organizations_pages_oldest_first(api: ApiHarness) -> None:
    created = [(await create_organization(api, f"org {i}")).id for i in range(3)]

    pages: list[list[str]] = []
    token = ""
    while True:
        response = await api.org_a.admin.ListOrganizations(
            admin_service_pb2.ListOrganizationsRequest(page_size=2, page_token=token)
        )
        pages.append([o.id for o in response.organizations])
        token = response.next_page_token
        if not token:
            break

    everything = [organization for page in pages for organization in page]
    assert [len(page) for page in pages] == [2, 2, 1]
    assert everything == [
        api.org_a.caller.organization_id,
        api.org_b.caller.organization_id,
        *created,
    ]


async def test_delete_an_organization_removes_it_and_its_data(api: ApiHarness) -> None:
    organization, member = await new_member(api)
    await member.blocks.CreateBlock(
        block_service_pb2.CreateBlockRequest(block=block_pb2.Block(label="human"))
    )

    await api.org_a.admin.DeleteOrganization(
        admin_service_pb2.DeleteOrganizationRequest(name=organization.name)
    )

    error = await fails(
        api.org_a.admin.GetOrganization(
            admin_service_pb2.GetOrganizationRequest(name=organization.name)
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    users = await fails(
        api.org_a.admin.ListUsers(admin_service_pb2.ListUsersRequest(parent=organization.name))
    )
    assert users.code() == grpc.StatusCode.NOT_FOUND
    again = await fails(
        api.org_a.admin.DeleteOrganization(
            admin_service_pb2.DeleteOrganizationRequest(name=organization.name)
        )
    )
    assert again.code() == grpc.StatusCode.NOT_FOUND
    # Other organizations are untouched.
    assert await block_count(api.org_b) == 0
    await api.org_a.admin.GetOrganization(
        admin_service_pb2.GetOrganizationRequest(
            name=f"organizations/{api.org_b.caller.organization_id}"
        )
    )


async def test_a_deleted_organizations_keys_stop_working(api: ApiHarness) -> None:
    organization, member = await new_member(api)
    assert await block_count(member) == 0  # the key is verified (and cached) once

    await api.org_a.admin.DeleteOrganization(
        admin_service_pb2.DeleteOrganizationRequest(name=organization.name)
    )

    error = await fails(block_count(member))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --------------------------------------------------------------------------- users


async def test_create_list_and_delete_users(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    ada = await create_user(api, organization.name, "Ada")
    bob = await create_user(api, organization.name, "Bob")

    assert ada.id.startswith("user-")
    assert ada.name == f"{organization.name}/users/{ada.id}"
    assert ada.display_name == "Ada"
    listed = await api.org_a.admin.ListUsers(
        admin_service_pb2.ListUsersRequest(parent=organization.name)
    )
    assert list(listed.users) == [ada, bob]

    await api.org_a.admin.DeleteUser(admin_service_pb2.DeleteUserRequest(name=ada.name))

    listed = await api.org_a.admin.ListUsers(
        admin_service_pb2.ListUsersRequest(parent=organization.name)
    )
    assert list(listed.users) == [bob]
    again = await fails(
        api.org_a.admin.DeleteUser(admin_service_pb2.DeleteUserRequest(name=ada.name))
    )
    assert again.code() == grpc.StatusCode.NOT_FOUND


async def test_list_users_pages(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    created = [(await create_user(api, organization.name, f"user {i}")).id for i in range(3)]

    first = await api.org_a.admin.ListUsers(
        admin_service_pb2.ListUsersRequest(parent=organization.name, page_size=2)
    )
    second = await api.org_a.admin.ListUsers(
        admin_service_pb2.ListUsersRequest(
            parent=organization.name, page_size=2, page_token=first.next_page_token
        )
    )

    assert [u.id for u in first.users] == created[:2]
    assert [u.id for u in second.users] == created[2:]
    assert second.next_page_token == ""
    # A token is bound to its organization.
    error = await fails(
        api.org_a.admin.ListUsers(
            admin_service_pb2.ListUsersRequest(
                parent=f"organizations/{api.org_b.caller.organization_id}",
                page_size=2,
                page_token=first.next_page_token,
            )
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(rich_status(error)) == "INVALID_PAGE_TOKEN"


async def test_users_are_listed_per_organization(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    await create_user(api, organization.name, "Ada")

    listed = await api.org_a.admin.ListUsers(
        admin_service_pb2.ListUsersRequest(
            parent=f"organizations/{api.org_b.caller.organization_id}"
        )
    )

    assert [user.display_name for user in listed.users] == ["org-b user"]


async def test_create_user_in_a_missing_organization_is_not_found(api: ApiHarness) -> None:
    error = await fails(create_user(api, f"organizations/org-{uuid.uuid4()}"))

    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_create_user_with_a_request_id_is_idempotent(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    request_id = str(uuid.uuid4())

    first = await create_user(api, organization.name, "Ada", request_id)
    second = await create_user(api, organization.name, "Ada", request_id)

    assert second == first
    listed = await api.org_a.admin.ListUsers(
        admin_service_pb2.ListUsersRequest(parent=organization.name)
    )
    assert [user.id for user in listed.users] == [first.id]


async def test_delete_a_user_of_another_organization_by_a_wrong_name_is_not_found(
    api: ApiHarness,
) -> None:
    organization = await create_organization(api, "Acme")
    user = await create_user(api, organization.name)
    wrong = f"organizations/{api.org_b.caller.organization_id}/users/{user.id}"

    error = await fails(api.org_a.admin.DeleteUser(admin_service_pb2.DeleteUserRequest(name=wrong)))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await api.org_a.admin.ListUsers(
        admin_service_pb2.ListUsersRequest(parent=organization.name)
    )
    assert [u.id for u in listed.users] == [user.id]


async def test_a_deleted_users_keys_stop_working(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    user = await create_user(api, organization.name)
    key = await create_key(api, organization.name, user.name)
    member = client_for(api, key, organization)
    assert await block_count(member) == 0  # the key is verified (and cached) once

    await api.org_a.admin.DeleteUser(admin_service_pb2.DeleteUserRequest(name=user.name))

    assert await list_keys(api, organization.name) == []
    error = await fails(block_count(member))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --------------------------------------------------------------------------- API keys


async def test_a_new_key_shows_its_secret_once_and_authenticates(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    user = await create_user(api, organization.name)

    key = await create_key(api, organization.name, user.name, display_name="ci")

    assert key.id.startswith("apikey-")
    assert key.name == f"{organization.name}/apiKeys/{key.id}"
    assert key.user == user.name
    assert key.display_name == "ci"
    assert key.admin is False
    assert key.secret.startswith("engram_")
    assert len(key.secret) > 40
    assert key.display_prefix == key.secret[:14]
    listed = await list_keys(api, organization.name)
    assert [(k.id, k.secret, k.display_prefix) for k in listed] == [
        (key.id, "", key.display_prefix)
    ]

    member = client_for(api, key, organization)
    block = await member.blocks.CreateBlock(
        block_service_pb2.CreateBlockRequest(block=block_pb2.Block(label="human"))
    )
    # The key acts in its own organization, and nowhere else.
    assert await block_count(member) == 1
    assert await block_count(api.org_a) == 0
    error = await fails(
        api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=block.name))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    used = await list_keys(api, organization.name)
    assert used[0].last_use_time.seconds > 0


async def test_a_non_admin_key_cannot_use_admin_service(api: ApiHarness) -> None:
    _, member = await new_member(api)

    error = await fails(
        member.admin.ListOrganizations(admin_service_pb2.ListOrganizationsRequest())
    )

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(rich_status(error)) == "PERMISSION_DENIED"


async def test_an_admin_key_can_use_admin_service(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    user = await create_user(api, organization.name)
    key = await create_key(api, organization.name, user.name, admin=True)
    admin = client_for(api, key, organization)

    assert key.admin is True
    fetched = await admin.admin.GetOrganization(
        admin_service_pb2.GetOrganizationRequest(name=organization.name)
    )
    assert fetched.id == organization.id


async def test_a_retried_create_returns_the_same_key_without_its_secret(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    user = await create_user(api, organization.name)
    request_id = str(uuid.uuid4())

    first = await create_key(api, organization.name, user.name, request_id=request_id)
    retry = await create_key(api, organization.name, user.name, request_id=request_id)

    assert first.secret
    assert retry.id == first.id
    assert retry.display_prefix == first.display_prefix
    assert retry.secret == ""
    assert [k.id for k in await list_keys(api, organization.name)] == [first.id]
    # The secret from the first response still works.
    assert await block_count(client_for(api, first, organization)) == 0


async def test_create_key_for_a_user_of_another_organization_is_invalid(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    other = await create_organization(api, "Other")
    user = await create_user(api, other.name)

    error = await fails(create_key(api, organization.name, user.name))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "api_key.user" in violations(error)
    assert await list_keys(api, organization.name) == []


async def test_create_key_for_a_missing_user_is_not_found(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")

    error = await fails(
        create_key(api, organization.name, f"{organization.name}/users/user-{uuid.uuid4()}")
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await list_keys(api, organization.name) == []


async def test_create_key_with_a_malformed_user_is_invalid(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")

    error = await fails(create_key(api, organization.name, "users/me"))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "api_key.user" in violations(error)


async def test_a_deleted_key_stops_working_at_once(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    user = await create_user(api, organization.name)
    doomed = await create_key(api, organization.name, user.name)
    kept = await create_key(api, organization.name, user.name)
    member = client_for(api, doomed, organization)
    assert await block_count(member) == 0  # verified, so now cached by the authenticator

    await api.org_a.admin.DeleteApiKey(admin_service_pb2.DeleteApiKeyRequest(name=doomed.name))

    error = await fails(block_count(member))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(rich_status(error)) == "UNAUTHENTICATED"
    assert [k.id for k in await list_keys(api, organization.name)] == [kept.id]
    assert await block_count(client_for(api, kept, organization)) == 0
    again = await fails(
        api.org_a.admin.DeleteApiKey(admin_service_pb2.DeleteApiKeyRequest(name=doomed.name))
    )
    assert again.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_a_key_under_the_wrong_organization_is_not_found(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    user = await create_user(api, organization.name)
    key = await create_key(api, organization.name, user.name)
    wrong = f"organizations/{api.org_b.caller.organization_id}/apiKeys/{key.id}"

    error = await fails(
        api.org_a.admin.DeleteApiKey(admin_service_pb2.DeleteApiKeyRequest(name=wrong))
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await block_count(client_for(api, key, organization)) == 0


async def test_list_keys_pages(api: ApiHarness) -> None:
    organization = await create_organization(api, "Acme")
    user = await create_user(api, organization.name)
    created = [(await create_key(api, organization.name, user.name)).id for _ in range(3)]

    first = await api.org_a.admin.ListApiKeys(
        admin_service_pb2.ListApiKeysRequest(parent=organization.name, page_size=2)
    )
    second = await api.org_a.admin.ListApiKeys(
        admin_service_pb2.ListApiKeysRequest(
            parent=organization.name, page_size=2, page_token=first.next_page_token
        )
    )

    assert [k.id for k in first.api_keys] == created[:2]
    assert [k.id for k in second.api_keys] == created[2:]
    assert second.next_page_token == ""
    assert all(k.secret == "" for k in [*first.api_keys, *second.api_keys])
