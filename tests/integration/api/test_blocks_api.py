"""BlockService through the generated stubs: limits, pagination, field masks, etags, idempotency."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2

from engram.rpc.errors import reason_of, unpack_detail
from engram.v1 import agent_pb2, agent_service_pb2, block_pb2, block_service_pb2
from support.api import ApiHarness, Client, rich_status

DEFAULT_LIMIT = 100_000


async def fails(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest field violations of a failed call, field -> description."""
    bad_request = unpack_detail(rich_status(error), error_details_pb2.BadRequest)
    assert bad_request is not None, f"no BadRequest in {error.details()}"
    return {v.field: v.description for v in bad_request.field_violations}


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def create_block(client: Client, label: str = "human", **fields: Any) -> block_pb2.Block:
    block: block_pb2.Block = await client.blocks.CreateBlock(
        block_service_pb2.CreateBlockRequest(block=block_pb2.Block(label=label, **fields))
    )
    return block


async def list_all(client: Client, page_size: int, label: str = "") -> list[list[str]]:
    """Every page of ListBlocks as lists of ids, following next_page_token to the end."""
    pages: list[list[str]] = []
    token = ""
    while True:
        response = await client.blocks.ListBlocks(
            block_service_pb2.ListBlocksRequest(page_size=page_size, page_token=token, label=label)
        )
        pages.append([block.id for block in response.blocks])
        token = response.next_page_token
        if not token:
            return pages
        assert len(pages) < 50, "pagination does not end"


# --------------------------------------------------------------------------- create


async def test_create_returns_every_field(api: ApiHarness) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"source": "import", "rank": 3})
    block = await create_block(
        api.org_a,
        label="persona",
        value="I am a helpful assistant.",
        limit=500,
        description="Who the agent is",
        read_only=True,
        metadata=metadata,
    )

    assert block.id.startswith("block-")
    assert block.name == f"blocks/{block.id}"
    assert block.label == "persona"
    assert block.value == "I am a helpful assistant."
    assert block.limit == 500
    assert block.description == "Who the agent is"
    assert block.read_only is True
    assert dict(block.metadata) == {"source": "import", "rank": 3}
    assert list(block.agents) == []
    assert block.etag
    assert block.create_time.seconds > 0
    assert block.update_time.seconds > 0


async def test_create_with_limit_zero_gets_the_default_limit(api: ApiHarness) -> None:
    block = await create_block(api.org_a, value="short")

    assert block.limit == DEFAULT_LIMIT


async def test_create_strips_the_label_and_null_bytes(api: ApiHarness) -> None:
    block = await create_block(api.org_a, label="  human  ", value="a\x00b")

    assert block.label == "human"
    assert block.value == "ab"


async def test_create_value_over_the_limit_is_refused_on_the_value_field(
    api: ApiHarness,
) -> None:
    error = await fails(create_block(api.org_a, value="x" * 11, limit=10))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rich_status(error)
    assert reason_of(status) == "INVALID_ARGUMENT"
    found = violations(error)
    assert list(found) == ["block.value"]
    assert "11 characters" in found["block.value"]
    assert "limit of 10" in found["block.value"]
    listed = await api.org_a.blocks.ListBlocks(block_service_pb2.ListBlocksRequest())
    assert list(listed.blocks) == []


async def test_create_value_exactly_at_the_limit_is_accepted(api: ApiHarness) -> None:
    block = await create_block(api.org_a, value="x" * 10, limit=10)

    assert block.value == "x" * 10
    assert block.limit == 10


async def test_create_value_over_the_default_limit_is_refused(api: ApiHarness) -> None:
    error = await fails(create_block(api.org_a, value="y" * (DEFAULT_LIMIT + 1)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "block.value" in violations(error)


async def test_create_without_a_label_is_invalid(api: ApiHarness) -> None:
    for label in ("", "   "):
        error = await fails(create_block(api.org_a, label=label, value="text"))

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, label
        assert reason_of(rich_status(error)) == "INVALID_ARGUMENT"
        assert violations(error) == {"block.label": "is required"}


async def test_create_with_a_label_too_long_is_invalid(api: ApiHarness) -> None:
    error = await fails(create_block(api.org_a, label="l" * 201))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "block.label" in violations(error)


async def test_create_with_a_negative_limit_is_invalid(api: ApiHarness) -> None:
    error = await fails(create_block(api.org_a, limit=-5))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "block.limit" in violations(error)


async def test_create_reports_every_bad_field_at_once(api: ApiHarness) -> None:
    error = await fails(create_block(api.org_a, label="", limit=-1))

    assert set(violations(error)) == {"block.label", "block.limit"}


# --------------------------------------------------------------------------- idempotency


async def test_create_with_the_same_request_id_returns_the_first_block(api: ApiHarness) -> None:
    request_id = str(uuid.uuid4())
    request = block_service_pb2.CreateBlockRequest(
        block=block_pb2.Block(label="human", value="first"), request_id=request_id
    )
    first = await api.org_a.blocks.CreateBlock(request)
    retry = block_service_pb2.CreateBlockRequest(
        block=block_pb2.Block(label="human", value="retried"), request_id=request_id
    )
    second = await api.org_a.blocks.CreateBlock(retry)

    assert second.id == first.id
    assert second.value == "first"
    listed = await api.org_a.blocks.ListBlocks(block_service_pb2.ListBlocksRequest())
    assert [block.id for block in listed.blocks] == [first.id]


async def test_create_with_a_new_request_id_creates_another_block(api: ApiHarness) -> None:
    first = await api.org_a.blocks.CreateBlock(
        block_service_pb2.CreateBlockRequest(
            block=block_pb2.Block(label="human"), request_id=str(uuid.uuid4())
        )
    )
    second = await api.org_a.blocks.CreateBlock(
        block_service_pb2.CreateBlockRequest(
            block=block_pb2.Block(label="human"), request_id=str(uuid.uuid4())
        )
    )

    assert first.id != second.id


async def test_request_ids_are_per_organization(api: ApiHarness) -> None:
    request_id = str(uuid.uuid4())
    request = block_service_pb2.CreateBlockRequest(
        block=block_pb2.Block(label="human"), request_id=request_id
    )
    in_a = await api.org_a.blocks.CreateBlock(request)
    in_b = await api.org_b.blocks.CreateBlock(request)

    assert in_a.id != in_b.id
    fetched = await api.org_b.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=in_b.name))
    assert fetched.id == in_b.id


async def test_create_with_a_request_id_that_is_not_a_uuid_is_invalid(api: ApiHarness) -> None:
    error = await fails(
        api.org_a.blocks.CreateBlock(
            block_service_pb2.CreateBlockRequest(
                block=block_pb2.Block(label="human"), request_id="retry-1"
            )
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in violations(error)


async def test_a_refused_create_does_not_consume_its_request_id(api: ApiHarness) -> None:
    request_id = str(uuid.uuid4())
    await fails(
        api.org_a.blocks.CreateBlock(
            block_service_pb2.CreateBlockRequest(
                block=block_pb2.Block(label="human", value="xx", limit=1), request_id=request_id
            )
        )
    )
    block = await api.org_a.blocks.CreateBlock(
        block_service_pb2.CreateBlockRequest(
            block=block_pb2.Block(label="human", value="x", limit=1), request_id=request_id
        )
    )

    assert block.value == "x"


# --------------------------------------------------------------------------- get


async def test_get_returns_the_created_block(api: ApiHarness) -> None:
    created = await create_block(api.org_a, value="hello", limit=50)

    fetched = await api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=created.name))

    assert fetched == created


async def test_get_of_a_missing_block_is_not_found(api: ApiHarness) -> None:
    missing = f"blocks/block-{uuid.uuid4()}"

    error = await fails(api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=missing)))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    status = rich_status(error)
    assert reason_of(status) == "NOT_FOUND"
    info = unpack_detail(status, error_details_pb2.ErrorInfo)
    assert info is not None
    assert info.metadata["id"] == missing.removeprefix("blocks/")


async def test_another_organizations_block_is_not_found(api: ApiHarness) -> None:
    created = await create_block(api.org_a, value="secret of org A")

    error = await fails(
        api.org_b.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=created.name))
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await api.org_b.blocks.ListBlocks(block_service_pb2.ListBlocksRequest())
    assert list(listed.blocks) == []
    update = await fails(
        api.org_b.blocks.UpdateBlock(
            block_service_pb2.UpdateBlockRequest(
                block=block_pb2.Block(name=created.name, value="hijacked"),
                update_mask=mask("value"),
            )
        )
    )
    assert update.code() == grpc.StatusCode.NOT_FOUND
    delete = await fails(
        api.org_b.blocks.DeleteBlock(block_service_pb2.DeleteBlockRequest(name=created.name))
    )
    assert delete.code() == grpc.StatusCode.NOT_FOUND
    still = await api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=created.name))
    assert still.value == "secret of org A"


async def test_get_with_a_malformed_name_is_invalid(api: ApiHarness) -> None:
    for name in (
        "",
        "block-123",
        "agents/block-00000000-0000-4000-8000-000000000000",
        "blocks/tool-00000000-0000-4000-8000-000000000000",
    ):
        error = await fails(api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=name)))

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "name" in violations(error)


# --------------------------------------------------------------------------- list


async def test_list_pages_through_every_block_oldest_first(api: ApiHarness) -> None:
    created = [(await create_block(api.org_a, label=f"label-{i}")).id for i in range(5)]

    pages = await list_all(api.org_a, page_size=2)

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [block_id for page in pages for block_id in page] == created


async def test_list_with_an_exact_page_size_ends_without_an_empty_page(api: ApiHarness) -> None:
    created = [(await create_block(api.org_a, label=f"label-{i}")).id for i in range(4)]

    pages = await list_all(api.org_a, page_size=2)

    assert pages == [created[:2], created[2:]]


async def test_list_filters_by_label(api: ApiHarness) -> None:
    humans = []
    for index in range(3):
        humans.append((await create_block(api.org_a, label="human", value=str(index))).id)
        await create_block(api.org_a, label="persona")
    await create_block(api.org_a, label="humans")

    pages = await list_all(api.org_a, page_size=2, label="human")

    assert [block_id for page in pages for block_id in page] == humans
    none = await api.org_a.blocks.ListBlocks(block_service_pb2.ListBlocksRequest(label="nobody"))
    assert list(none.blocks) == []
    assert none.next_page_token == ""


async def test_list_token_with_a_different_filter_is_refused(api: ApiHarness) -> None:
    for _ in range(3):
        await create_block(api.org_a, label="human")
    first = await api.org_a.blocks.ListBlocks(
        block_service_pb2.ListBlocksRequest(page_size=1, label="human")
    )
    assert first.next_page_token

    error = await fails(
        api.org_a.blocks.ListBlocks(
            block_service_pb2.ListBlocksRequest(
                page_size=1, page_token=first.next_page_token, label="persona"
            )
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(rich_status(error)) == "INVALID_PAGE_TOKEN"
    assert "page_token" in violations(error)


async def test_list_with_a_forged_token_is_refused(api: ApiHarness) -> None:
    # Not base64 JSON at all; then well-formed JSON that this server never issued.
    for token in ("not-a-token", "eyJ4IjoxfQ"):
        error = await fails(
            api.org_a.blocks.ListBlocks(block_service_pb2.ListBlocksRequest(page_token=token))
        )

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, token
        assert reason_of(rich_status(error)) == "INVALID_PAGE_TOKEN"


async def test_list_with_a_negative_page_size_is_invalid(api: ApiHarness) -> None:
    error = await fails(
        api.org_a.blocks.ListBlocks(block_service_pb2.ListBlocksRequest(page_size=-1))
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in violations(error)


# --------------------------------------------------------------------------- update


async def test_update_changes_only_the_masked_fields(api: ApiHarness) -> None:
    created = await create_block(api.org_a, value="old", description="kept", limit=100)

    updated = await api.org_a.blocks.UpdateBlock(
        block_service_pb2.UpdateBlockRequest(
            block=block_pb2.Block(name=created.name, value="new", description="ignored"),
            update_mask=mask("value"),
        )
    )

    assert updated.value == "new"
    assert updated.description == "kept"
    assert updated.limit == 100
    assert updated.label == "human"
    assert updated.etag != created.etag
    fetched = await api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=created.name))
    assert fetched == updated


async def test_update_with_an_empty_mask_sets_the_fields_present(api: ApiHarness) -> None:
    created = await create_block(api.org_a, value="old", description="old description")

    updated = await api.org_a.blocks.UpdateBlock(
        block_service_pb2.UpdateBlockRequest(
            block=block_pb2.Block(name=created.name, label="persona", value="new")
        )
    )

    assert (updated.label, updated.value) == ("persona", "new")
    assert updated.description == "old description"


async def test_update_with_a_mask_can_clear_a_field(api: ApiHarness) -> None:
    created = await create_block(api.org_a, value="old", description="to clear")

    updated = await api.org_a.blocks.UpdateBlock(
        block_service_pb2.UpdateBlockRequest(
            block=block_pb2.Block(name=created.name), update_mask=mask("description", "value")
        )
    )

    assert updated.description == ""
    assert updated.value == ""


async def test_update_metadata_replaces_it(api: ApiHarness) -> None:
    first = struct_pb2.Struct()
    first.update({"a": 1, "b": "two"})
    created = await create_block(api.org_a, metadata=first)
    second = struct_pb2.Struct()
    second.update({"c": True})

    updated = await api.org_a.blocks.UpdateBlock(
        block_service_pb2.UpdateBlockRequest(
            block=block_pb2.Block(name=created.name, metadata=second), update_mask=mask("metadata")
        )
    )

    assert dict(updated.metadata) == {"c": True}


async def test_update_with_an_unknown_mask_path_is_invalid(api: ApiHarness) -> None:
    created = await create_block(api.org_a, value="old")

    for path in ("id", "agents", "etag", "create_time", "nonsense"):
        error = await fails(
            api.org_a.blocks.UpdateBlock(
                block_service_pb2.UpdateBlockRequest(
                    block=block_pb2.Block(name=created.name, value="new"),
                    update_mask=mask("value", path),
                )
            )
        )

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, path
        assert path in violations(error)["update_mask"]
    fetched = await api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=created.name))
    assert fetched.value == "old"
    assert fetched.etag == created.etag


async def test_update_value_over_the_limit_is_refused(api: ApiHarness) -> None:
    created = await create_block(api.org_a, value="ok", limit=5)

    error = await fails(
        api.org_a.blocks.UpdateBlock(
            block_service_pb2.UpdateBlockRequest(
                block=block_pb2.Block(name=created.name, value="too long"),
                update_mask=mask("value"),
            )
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(error)) == ["block.value"]
    fetched = await api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=created.name))
    assert fetched.value == "ok"


async def test_update_lowering_the_limit_below_the_value_is_refused_on_limit(
    api: ApiHarness,
) -> None:
    created = await create_block(api.org_a, value="twelve chars", limit=100)

    error = await fails(
        api.org_a.blocks.UpdateBlock(
            block_service_pb2.UpdateBlockRequest(
                block=block_pb2.Block(name=created.name, limit=5), update_mask=mask("limit")
            )
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations(error)) == ["block.limit"]


async def test_update_value_and_limit_together_are_checked_together(api: ApiHarness) -> None:
    created = await create_block(api.org_a, value="abc", limit=3)

    updated = await api.org_a.blocks.UpdateBlock(
        block_service_pb2.UpdateBlockRequest(
            block=block_pb2.Block(name=created.name, value="abcdef", limit=6),
            update_mask=mask("value", "limit"),
        )
    )

    assert (updated.value, updated.limit) == ("abcdef", 6)


async def test_update_with_the_current_etag_succeeds(api: ApiHarness) -> None:
    created = await create_block(api.org_a, value="v1")

    updated = await api.org_a.blocks.UpdateBlock(
        block_service_pb2.UpdateBlockRequest(
            block=block_pb2.Block(name=created.name, value="v2", etag=created.etag),
            update_mask=mask("value"),
        )
    )

    assert updated.value == "v2"
    assert updated.etag != created.etag


async def test_update_with_a_stale_etag_is_aborted(api: ApiHarness) -> None:
    created = await create_block(api.org_a, value="v1")
    await api.org_a.blocks.UpdateBlock(
        block_service_pb2.UpdateBlockRequest(
            block=block_pb2.Block(name=created.name, value="v2"), update_mask=mask("value")
        )
    )

    error = await fails(
        api.org_a.blocks.UpdateBlock(
            block_service_pb2.UpdateBlockRequest(
                block=block_pb2.Block(name=created.name, value="v3", etag=created.etag),
                update_mask=mask("value"),
            )
        )
    )

    assert error.code() == grpc.StatusCode.ABORTED
    status = rich_status(error)
    assert reason_of(status) == "CONCURRENT_UPDATE"
    info = unpack_detail(status, error_details_pb2.ErrorInfo)
    assert info is not None
    assert info.metadata["resource"] == created.name
    fetched = await api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=created.name))
    assert fetched.value == "v2"


async def test_api_can_change_a_read_only_block(api: ApiHarness) -> None:
    """read_only only binds the agent's memory tools; the API may still edit the block."""
    created = await create_block(api.org_a, value="fixed", read_only=True)

    updated = await api.org_a.blocks.UpdateBlock(
        block_service_pb2.UpdateBlockRequest(
            block=block_pb2.Block(name=created.name, value="changed by the API"),
            update_mask=mask("value"),
        )
    )

    assert updated.value == "changed by the API"
    assert updated.read_only is True
    unlocked = await api.org_a.blocks.UpdateBlock(
        block_service_pb2.UpdateBlockRequest(
            block=block_pb2.Block(name=created.name, read_only=False),
            update_mask=mask("read_only"),
        )
    )
    assert unlocked.read_only is False


async def test_update_of_a_missing_block_is_not_found(api: ApiHarness) -> None:
    error = await fails(
        api.org_a.blocks.UpdateBlock(
            block_service_pb2.UpdateBlockRequest(
                block=block_pb2.Block(name=f"blocks/block-{uuid.uuid4()}", value="x"),
                update_mask=mask("value"),
            )
        )
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_update_without_a_name_is_invalid(api: ApiHarness) -> None:
    error = await fails(
        api.org_a.blocks.UpdateBlock(
            block_service_pb2.UpdateBlockRequest(
                block=block_pb2.Block(value="x"), update_mask=mask("value")
            )
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "block.name" in violations(error)


# --------------------------------------------------------------------------- delete


async def test_delete_removes_the_block(api: ApiHarness) -> None:
    created = await create_block(api.org_a)
    kept = await create_block(api.org_a, label="persona")

    await api.org_a.blocks.DeleteBlock(block_service_pb2.DeleteBlockRequest(name=created.name))

    error = await fails(
        api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=created.name))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await api.org_a.blocks.ListBlocks(block_service_pb2.ListBlocksRequest())
    assert [block.id for block in listed.blocks] == [kept.id]
    again = await fails(
        api.org_a.blocks.DeleteBlock(block_service_pb2.DeleteBlockRequest(name=created.name))
    )
    assert again.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_with_a_stale_etag_is_aborted(api: ApiHarness) -> None:
    created = await create_block(api.org_a, value="v1")
    updated = await api.org_a.blocks.UpdateBlock(
        block_service_pb2.UpdateBlockRequest(
            block=block_pb2.Block(name=created.name, value="v2"), update_mask=mask("value")
        )
    )

    error = await fails(
        api.org_a.blocks.DeleteBlock(
            block_service_pb2.DeleteBlockRequest(name=created.name, etag=created.etag)
        )
    )

    assert error.code() == grpc.StatusCode.ABORTED
    assert reason_of(rich_status(error)) == "CONCURRENT_UPDATE"
    await api.org_a.blocks.DeleteBlock(
        block_service_pb2.DeleteBlockRequest(name=created.name, etag=updated.etag)
    )
    gone = await fails(
        api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=created.name))
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_of_an_attached_block_needs_force(api: ApiHarness) -> None:
    block = await create_block(api.org_a, value="shared")
    agent = await api.org_a.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(display_name="holder"),
            block_names=[block.name],
            include_base_tools=False,
        )
    )
    attached = await api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=block.name))
    assert list(attached.agents) == [agent.name]

    error = await fails(
        api.org_a.blocks.DeleteBlock(block_service_pb2.DeleteBlockRequest(name=block.name))
    )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = rich_status(error)
    assert reason_of(status) == "FAILED_PRECONDITION"
    failure = unpack_detail(status, error_details_pb2.PreconditionFailure)
    assert failure is not None
    assert [(v.type, v.subject) for v in failure.violations] == [("BLOCK_IN_USE", block.name)]

    await api.org_a.blocks.DeleteBlock(
        block_service_pb2.DeleteBlockRequest(name=block.name, force=True)
    )
    gone = await fails(
        api.org_a.blocks.GetBlock(block_service_pb2.GetBlockRequest(name=block.name))
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    holder = await api.org_a.agents.GetAgent(agent_service_pb2.GetAgentRequest(name=agent.name))
    assert list(holder.blocks) == []
