"""ToolService through the generated stubs: static schemas, source errors, upserts, base tools."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from google.rpc import error_details_pb2

from engram.rpc.errors import reason_of, unpack_detail
from engram.v1 import agent_pb2, agent_service_pb2, tool_pb2, tool_service_pb2
from support.api import ApiHarness, Client, rich_status

ROLL_DICE = textwrap.dedent(
    '''
    import random


    def _helper() -> int:
        return 4


    def roll_dice(sides: int, count: int = 2, label: str | None = None, exact: bool = False) -> str:
        """Roll some dice and report the total.

        Args:
            sides: How many faces each die has.
            count: How many dice to roll.
            label (str): A name to print
                next to the result.
            exact: Whether to list every die.

        Returns:
            The total as text.
        """
        return str(sum(random.randint(1, sides) for _ in range(count)))
    '''
)

ROLL_DICE_SCHEMA = {
    "name": "roll_dice",
    "description": "Roll some dice and report the total.",
    "parameters": {
        "type": "object",
        "properties": {
            "sides": {"type": "integer", "description": "How many faces each die has."},
            "count": {"type": "integer", "description": "How many dice to roll.", "default": 2},
            "label": {"type": "string", "description": "A name to print next to the result."},
            "exact": {
                "type": "boolean",
                "description": "Whether to list every die.",
                "default": False,
            },
        },
        "required": ["sides"],
    },
}


def greeting_source(name: str = "greet", summary: str = "Greet someone.") -> str:
    return textwrap.dedent(
        f'''
        def {name}(person: str) -> str:
            """{summary}

            Args:
                person: Who to greet.
            """
            return "hello " + person
        '''
    )


# The four ways a source can fail to become a schema, with a phrase the message must hold.
BAD_SOURCES = {
    "missing docstring": (
        "def shout(text: str) -> str:\n    return text.upper()\n",
        "has no docstring",
    ),
    "missing annotation": (
        textwrap.dedent(
            '''
            def shout(text) -> str:
                """Shout.

                Args:
                    text: What to shout.
                """
                return text.upper()
            '''
        ),
        "parameter 'text' of function 'shout' (line 2) has no type annotation",
    ),
    "missing parameter description": (
        textwrap.dedent(
            '''
            def shout(text: str, times: int) -> str:
                """Shout.

                Args:
                    text: What to shout.
                """
                return text.upper() * times
            '''
        ),
        "parameter 'times' of function 'shout' (line 2) is not described in the docstring",
    ),
    "syntax error": (
        "def shout(text: str) -> str\n    return text\n",
        "syntax error on line 1",
    ),
}


async def fails(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    bad_request = unpack_detail(rich_status(error), error_details_pb2.BadRequest)
    assert bad_request is not None, f"no BadRequest in {error.details()}"
    return {v.field: v.description for v in bad_request.field_violations}


def as_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def create_tool(client: Client, source: str, **fields: Any) -> tool_pb2.Tool:
    tool: tool_pb2.Tool = await client.tools.CreateTool(
        tool_service_pb2.CreateToolRequest(tool=tool_pb2.Tool(source_code=source, **fields))
    )
    return tool


async def get_tool(client: Client, name: str) -> tool_pb2.Tool:
    tool: tool_pb2.Tool = await client.tools.GetTool(tool_service_pb2.GetToolRequest(name=name))
    return tool


async def tool_names(client: Client, **request: Any) -> list[str]:
    """Every tool name ListTools returns, following pages to the end."""
    names: list[str] = []
    token = ""
    while True:
        response = await client.tools.ListTools(
            tool_service_pb2.ListToolsRequest(page_token=token, **request)
        )
        names.extend(tool.tool_name for tool in response.tools)
        token = response.next_page_token
        if not token:
            return names


# --------------------------------------------------------------------------- create


async def test_create_derives_the_schema_from_the_source(api: ApiHarness) -> None:
    tool = await create_tool(api.org_a, ROLL_DICE)

    assert tool.id.startswith("tool-")
    assert tool.name == f"tools/{tool.id}"
    assert tool.tool_name == "roll_dice"
    assert tool.description == "Roll some dice and report the total."
    assert tool.tool_type == tool_pb2.TOOL_TYPE_CUSTOM
    assert tool.source_type == tool_pb2.SOURCE_TYPE_PYTHON
    assert tool.source_code == ROLL_DICE
    assert as_dict(tool.json_schema) == ROLL_DICE_SCHEMA
    assert tool.return_char_limit == 50_000
    assert list(tool.tags) == []
    assert list(tool.pip_requirements) == []
    assert tool.default_requires_approval is False
    assert tool.etag
    assert tool.create_time.seconds > 0
    assert await get_tool(api.org_a, tool.name) == tool


async def test_create_with_a_description_overrides_the_docstring(api: ApiHarness) -> None:
    tool = await create_tool(api.org_a, ROLL_DICE, description="Throw dice for a board game.")

    assert tool.description == "Throw dice for a board game."
    schema = as_dict(tool.json_schema)
    assert schema["description"] == "Throw dice for a board game."
    assert schema["parameters"] == ROLL_DICE_SCHEMA["parameters"]


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
async def test_create_from_bad_source_is_an_invalid_tool_source(api: ApiHarness, case: str) -> None:
    source, phrase = BAD_SOURCES[case]

    error = await fails(create_tool(api.org_a, source))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rich_status(error)
    assert reason_of(status) == "INVALID_TOOL_SOURCE"
    assert phrase in status.message
    info = unpack_detail(status, error_details_pb2.ErrorInfo)
    assert info is not None
    assert info.domain == "engram.dev"
    assert info.metadata["field"] == "tool.source_code"
    found = violations(error)
    assert list(found) == ["tool.source_code"]
    assert phrase in found["tool.source_code"]
    assert await tool_names(api.org_a) == []


async def test_create_from_source_without_a_function_is_refused(api: ApiHarness) -> None:
    error = await fails(create_tool(api.org_a, "x = 1\n"))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(rich_status(error)) == "INVALID_TOOL_SOURCE"
    assert list(violations(error)) == ["tool.source_code"]


async def test_create_without_source_is_invalid(api: ApiHarness) -> None:
    error = await fails(create_tool(api.org_a, "   "))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(rich_status(error)) == "INVALID_ARGUMENT"
    assert violations(error) == {"tool.source_code": "is required"}


async def test_create_with_an_explicit_json_schema_uses_it(api: ApiHarness) -> None:
    schema = {
        "name": "lookup_order",
        "description": "Find an order by its number.",
        "parameters": {
            "type": "object",
            "properties": {"number": {"type": "string", "description": "The order number."}},
            "required": ["number"],
        },
    }
    # The source would not parse into a schema: the explicit one is used as given.
    source = "def lookup_order(number):\n    return number\n"

    tool = await create_tool(api.org_a, source, json_schema=struct(schema))

    assert tool.tool_name == "lookup_order"
    assert tool.description == "Find an order by its number."
    assert as_dict(tool.json_schema) == schema
    assert tool.source_code == source


async def test_create_with_a_json_schema_without_a_name_is_invalid(api: ApiHarness) -> None:
    error = await fails(
        create_tool(api.org_a, ROLL_DICE, json_schema=struct({"description": "nameless"}))
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tool.json_schema.name" in violations(error)


async def test_pip_requirements_tags_limits_and_metadata_round_trip(api: ApiHarness) -> None:
    tool = await create_tool(
        api.org_a,
        ROLL_DICE,
        tags=["games", "dice", "games"],
        return_char_limit=1234,
        pip_requirements=[
            tool_pb2.PipRequirement(name="numpy", version=">=1.26"),
            tool_pb2.PipRequirement(name="requests"),
        ],
        default_requires_approval=True,
        metadata=struct({"owner": "team-games"}),
    )
    fetched = await get_tool(api.org_a, tool.name)

    for seen in (tool, fetched):
        assert list(seen.tags) == ["games", "dice"]
        assert seen.return_char_limit == 1234
        assert [(r.name, r.version) for r in seen.pip_requirements] == [
            ("numpy", ">=1.26"),
            ("requests", ""),
        ]
        assert seen.default_requires_approval is True
        assert as_dict(seen.metadata) == {"owner": "team-games"}


async def test_return_char_limit_out_of_range_is_invalid(api: ApiHarness) -> None:
    for limit in (-1, 1_000_001):
        error = await fails(create_tool(api.org_a, ROLL_DICE, return_char_limit=limit))

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, limit
        assert "tool.return_char_limit" in violations(error)
    assert await tool_names(api.org_a) == []


async def test_pip_requirement_without_a_name_is_invalid(api: ApiHarness) -> None:
    error = await fails(
        create_tool(
            api.org_a,
            ROLL_DICE,
            pip_requirements=[tool_pb2.PipRequirement(name="ok"), tool_pb2.PipRequirement()],
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(error) == {"tool.pip_requirements[1].name": "is required"}


async def test_duplicate_name_in_one_organization_already_exists(api: ApiHarness) -> None:
    first = await create_tool(api.org_a, greeting_source(summary="Say hello."))

    error = await fails(create_tool(api.org_a, greeting_source(summary="Say hi.")))

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    status = rich_status(error)
    assert reason_of(status) == "ALREADY_EXISTS"
    assert "greet" in status.message
    assert "UpsertTool" in status.message
    listed = await api.org_a.tools.ListTools(tool_service_pb2.ListToolsRequest())
    assert [(t.id, t.description) for t in listed.tools] == [(first.id, "Say hello.")]


async def test_same_name_is_allowed_in_another_organization(api: ApiHarness) -> None:
    in_a = await create_tool(api.org_a, greeting_source())
    in_b = await create_tool(api.org_b, greeting_source())

    assert in_a.tool_name == in_b.tool_name == "greet"
    assert in_a.id != in_b.id
    assert await tool_names(api.org_a) == ["greet"]
    assert await tool_names(api.org_b) == ["greet"]
    error = await fails(api.org_b.tools.GetTool(tool_service_pb2.GetToolRequest(name=in_a.name)))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_create_with_a_request_id_is_idempotent(api: ApiHarness) -> None:
    request = tool_service_pb2.CreateToolRequest(
        tool=tool_pb2.Tool(source_code=greeting_source()), request_id=str(uuid.uuid4())
    )

    first = await api.org_a.tools.CreateTool(request)
    second = await api.org_a.tools.CreateTool(request)

    assert second.id == first.id
    assert await tool_names(api.org_a) == ["greet"]


# --------------------------------------------------------------------------- upsert


async def test_upsert_creates_then_replaces_by_name(api: ApiHarness) -> None:
    created = await api.org_a.tools.UpsertTool(
        tool_service_pb2.UpsertToolRequest(
            tool=tool_pb2.Tool(source_code=greeting_source(summary="Say hello."), tags=["v1"])
        )
    )
    replaced = await api.org_a.tools.UpsertTool(
        tool_service_pb2.UpsertToolRequest(
            tool=tool_pb2.Tool(
                source_code=greeting_source(summary="Say hello politely."), tags=["v2"]
            )
        )
    )

    assert replaced.id == created.id
    assert replaced.tool_name == "greet"
    assert created.description == "Say hello."
    assert replaced.description == "Say hello politely."
    assert as_dict(replaced.json_schema)["description"] == "Say hello politely."
    assert list(replaced.tags) == ["v2"]
    assert replaced.etag != created.etag
    listed = await api.org_a.tools.ListTools(tool_service_pb2.ListToolsRequest())
    assert [tool.id for tool in listed.tools] == [created.id]


async def test_upsert_with_bad_source_is_an_invalid_tool_source(api: ApiHarness) -> None:
    source, _ = BAD_SOURCES["missing docstring"]

    error = await fails(
        api.org_a.tools.UpsertTool(
            tool_service_pb2.UpsertToolRequest(tool=tool_pb2.Tool(source_code=source))
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(rich_status(error)) == "INVALID_TOOL_SOURCE"


# --------------------------------------------------------------------------- get / list


async def test_get_of_a_missing_tool_is_not_found(api: ApiHarness) -> None:
    error = await fails(get_tool(api.org_a, f"tools/tool-{uuid.uuid4()}"))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reason_of(rich_status(error)) == "NOT_FOUND"


async def test_list_is_ordered_by_name_across_pages(api: ApiHarness) -> None:
    for name in ("delta", "alpha", "echo", "charlie", "bravo"):
        await create_tool(api.org_a, greeting_source(name=name))

    pages: list[list[str]] = []
    token = ""
    while True:
        response = await api.org_a.tools.ListTools(
            tool_service_pb2.ListToolsRequest(page_size=2, page_token=token)
        )
        pages.append([tool.tool_name for tool in response.tools])
        token = response.next_page_token
        if not token:
            break

    assert pages == [["alpha", "bravo"], ["charlie", "delta"], ["echo"]]


async def test_list_filters_by_tool_name(api: ApiHarness) -> None:
    for name in ("alpha", "bravo", "alphabet"):
        await create_tool(api.org_a, greeting_source(name=name))

    response = await api.org_a.tools.ListTools(tool_service_pb2.ListToolsRequest(tool_name="alpha"))

    assert [tool.tool_name for tool in response.tools] == ["alpha"]
    assert response.next_page_token == ""
    assert await tool_names(api.org_a, tool_name="nothing") == []


async def test_list_filters_by_any_tag(api: ApiHarness) -> None:
    await create_tool(api.org_a, greeting_source(name="alpha"), tags=["red"])
    await create_tool(api.org_a, greeting_source(name="bravo"), tags=["blue", "green"])
    await create_tool(api.org_a, greeting_source(name="charlie"))
    await create_tool(api.org_a, greeting_source(name="delta"), tags=["green"])

    assert await tool_names(api.org_a, tags=["green", "red"], page_size=1) == [
        "alpha",
        "bravo",
        "delta",
    ]


async def test_tag_filter_fills_every_page(api: ApiHarness) -> None:
    # Untagged tools sort between the tagged ones: filtering must happen before paging,
    # or the pages would come back short or empty.
    for name in ("alpha", "bravo", "charlie", "delta", "echo"):
        tags = ["pick"] if name in ("alpha", "echo") else ["other"]
        await create_tool(api.org_a, greeting_source(name=name), tags=tags)

    first = await api.org_a.tools.ListTools(
        tool_service_pb2.ListToolsRequest(tags=["pick"], page_size=1)
    )
    second = await api.org_a.tools.ListTools(
        tool_service_pb2.ListToolsRequest(
            tags=["pick"], page_size=1, page_token=first.next_page_token
        )
    )
    assert [tool.tool_name for tool in first.tools] == ["alpha"]
    assert [tool.tool_name for tool in second.tools] == ["echo"]
    assert second.next_page_token == ""


async def test_list_token_with_a_different_filter_is_refused(api: ApiHarness) -> None:
    for name in ("alpha", "bravo"):
        await create_tool(api.org_a, greeting_source(name=name))
    first = await api.org_a.tools.ListTools(tool_service_pb2.ListToolsRequest(page_size=1))

    error = await fails(
        api.org_a.tools.ListTools(
            tool_service_pb2.ListToolsRequest(
                page_size=1, page_token=first.next_page_token, tool_name="bravo"
            )
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(rich_status(error)) == "INVALID_PAGE_TOKEN"


# --------------------------------------------------------------------------- update


async def test_update_changes_only_the_masked_fields(api: ApiHarness) -> None:
    created = await create_tool(api.org_a, ROLL_DICE, tags=["old"], return_char_limit=100)

    updated = await api.org_a.tools.UpdateTool(
        tool_service_pb2.UpdateToolRequest(
            tool=tool_pb2.Tool(name=created.name, tags=["new", "shiny"], return_char_limit=999),
            update_mask=mask("tags"),
        )
    )

    assert list(updated.tags) == ["new", "shiny"]
    assert updated.return_char_limit == 100
    assert updated.tool_name == "roll_dice"
    assert as_dict(updated.json_schema) == ROLL_DICE_SCHEMA
    assert updated.etag != created.etag
    assert await get_tool(api.org_a, created.name) == updated


async def test_update_description_keeps_the_parameters(api: ApiHarness) -> None:
    created = await create_tool(api.org_a, ROLL_DICE)

    updated = await api.org_a.tools.UpdateTool(
        tool_service_pb2.UpdateToolRequest(
            tool=tool_pb2.Tool(name=created.name, description="Throw dice."),
            update_mask=mask("description"),
        )
    )

    assert updated.description == "Throw dice."
    schema = as_dict(updated.json_schema)
    assert schema["description"] == "Throw dice."
    assert schema["parameters"] == ROLL_DICE_SCHEMA["parameters"]
    assert updated.tool_name == "roll_dice"


async def test_update_source_rederives_the_schema_and_may_rename(api: ApiHarness) -> None:
    created = await create_tool(api.org_a, greeting_source(name="greet"))

    updated = await api.org_a.tools.UpdateTool(
        tool_service_pb2.UpdateToolRequest(
            tool=tool_pb2.Tool(name=created.name, source_code=ROLL_DICE),
            update_mask=mask("source_code"),
        )
    )

    assert updated.id == created.id
    assert updated.tool_name == "roll_dice"
    assert updated.description == "Roll some dice and report the total."
    assert as_dict(updated.json_schema) == ROLL_DICE_SCHEMA
    assert await tool_names(api.org_a) == ["roll_dice"]


async def test_update_to_bad_source_is_refused_and_changes_nothing(api: ApiHarness) -> None:
    created = await create_tool(api.org_a, ROLL_DICE)
    source, phrase = BAD_SOURCES["missing annotation"]

    error = await fails(
        api.org_a.tools.UpdateTool(
            tool_service_pb2.UpdateToolRequest(
                tool=tool_pb2.Tool(name=created.name, source_code=source),
                update_mask=mask("source_code"),
            )
        )
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(rich_status(error)) == "INVALID_TOOL_SOURCE"
    assert phrase in violations(error)["tool.source_code"]
    assert await get_tool(api.org_a, created.name) == created


async def test_update_renaming_onto_an_existing_name_already_exists(api: ApiHarness) -> None:
    await create_tool(api.org_a, ROLL_DICE)
    greet = await create_tool(api.org_a, greeting_source())

    error = await fails(
        api.org_a.tools.UpdateTool(
            tool_service_pb2.UpdateToolRequest(
                tool=tool_pb2.Tool(name=greet.name, source_code=ROLL_DICE),
                update_mask=mask("source_code"),
            )
        )
    )

    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "another tool of the organization already has" in (error.details() or "")
    assert (await get_tool(api.org_a, greet.name)).tool_name == "greet"


async def test_update_with_an_unknown_mask_path_is_invalid(api: ApiHarness) -> None:
    created = await create_tool(api.org_a, ROLL_DICE)

    for path in ("tool_name", "tool_type", "id", "bogus"):
        error = await fails(
            api.org_a.tools.UpdateTool(
                tool_service_pb2.UpdateToolRequest(
                    tool=tool_pb2.Tool(name=created.name, tags=["x"]),
                    update_mask=mask("tags", path),
                )
            )
        )

        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, path
        assert path in violations(error)["update_mask"]
    assert list((await get_tool(api.org_a, created.name)).tags) == []


async def test_update_with_a_stale_etag_is_aborted(api: ApiHarness) -> None:
    created = await create_tool(api.org_a, ROLL_DICE)
    current = await api.org_a.tools.UpdateTool(
        tool_service_pb2.UpdateToolRequest(
            tool=tool_pb2.Tool(name=created.name, tags=["a"], etag=created.etag),
            update_mask=mask("tags"),
        )
    )

    error = await fails(
        api.org_a.tools.UpdateTool(
            tool_service_pb2.UpdateToolRequest(
                tool=tool_pb2.Tool(name=created.name, tags=["b"], etag=created.etag),
                update_mask=mask("tags"),
            )
        )
    )

    assert error.code() == grpc.StatusCode.ABORTED
    assert reason_of(rich_status(error)) == "CONCURRENT_UPDATE"
    assert list((await get_tool(api.org_a, created.name)).tags) == ["a"]
    again = await api.org_a.tools.UpdateTool(
        tool_service_pb2.UpdateToolRequest(
            tool=tool_pb2.Tool(name=created.name, tags=["b"], etag=current.etag),
            update_mask=mask("tags"),
        )
    )
    assert list(again.tags) == ["b"]


# --------------------------------------------------------------------------- delete


async def test_delete_removes_the_tool(api: ApiHarness) -> None:
    created = await create_tool(api.org_a, ROLL_DICE)
    kept = await create_tool(api.org_a, greeting_source())

    await api.org_a.tools.DeleteTool(tool_service_pb2.DeleteToolRequest(name=created.name))

    error = await fails(get_tool(api.org_a, created.name))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await tool_names(api.org_a) == [kept.tool_name]
    # The name is free again.
    recreated = await create_tool(api.org_a, ROLL_DICE)
    assert recreated.id != created.id


async def test_delete_with_a_stale_etag_is_aborted(api: ApiHarness) -> None:
    created = await create_tool(api.org_a, ROLL_DICE)
    await api.org_a.tools.UpdateTool(
        tool_service_pb2.UpdateToolRequest(
            tool=tool_pb2.Tool(name=created.name, tags=["a"]), update_mask=mask("tags")
        )
    )

    error = await fails(
        api.org_a.tools.DeleteTool(
            tool_service_pb2.DeleteToolRequest(name=created.name, etag=created.etag)
        )
    )

    assert error.code() == grpc.StatusCode.ABORTED
    assert (await get_tool(api.org_a, created.name)).id == created.id


async def test_delete_of_another_organizations_tool_is_not_found(api: ApiHarness) -> None:
    created = await create_tool(api.org_a, ROLL_DICE)

    error = await fails(
        api.org_b.tools.DeleteTool(tool_service_pb2.DeleteToolRequest(name=created.name))
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert (await get_tool(api.org_a, created.name)).id == created.id


async def test_delete_detaches_the_tool_from_agents(api: ApiHarness) -> None:
    tool = await create_tool(api.org_a, ROLL_DICE)
    agent = await api.org_a.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(display_name="gamer"),
            tool_names=[tool.name],
            include_base_tools=False,
        )
    )
    assert list(agent.tools) == [tool.name]

    await api.org_a.tools.DeleteTool(tool_service_pb2.DeleteToolRequest(name=tool.name))

    fetched = await api.org_a.agents.GetAgent(agent_service_pb2.GetAgentRequest(name=agent.name))
    assert list(fetched.tools) == []


# --------------------------------------------------------------------------- base tools


async def test_base_tools_exist_once_per_organization(api: ApiHarness) -> None:
    request = agent_service_pb2.CreateAgentRequest(
        agent=agent_pb2.Agent(agent_type=agent_pb2.AGENT_TYPE_HEARTBEAT),
        include_base_tools=True,
    )
    first = await api.org_a.agents.CreateAgent(request)
    second = await api.org_a.agents.CreateAgent(request)

    expected = [
        "archival_memory_insert",
        "archival_memory_search",
        "conversation_search",
        "memory_insert",
        "memory_replace",
        "send_message",
    ]
    assert await tool_names(api.org_a) == expected
    assert len(first.tools) == 6
    assert sorted(first.tools) == sorted(second.tools)
    listed = await api.org_a.tools.ListTools(tool_service_pb2.ListToolsRequest())
    kinds = {tool.tool_name: tool.tool_type for tool in listed.tools}
    assert kinds == {
        "archival_memory_insert": tool_pb2.TOOL_TYPE_MEMORY,
        "archival_memory_search": tool_pb2.TOOL_TYPE_MEMORY,
        "conversation_search": tool_pb2.TOOL_TYPE_MEMORY,
        "memory_insert": tool_pb2.TOOL_TYPE_MEMORY,
        "memory_replace": tool_pb2.TOOL_TYPE_MEMORY,
        "send_message": tool_pb2.TOOL_TYPE_CORE,
    }
    assert sorted(first.tools) == sorted(tool.name for tool in listed.tools)
    assert await tool_names(api.org_b) == []

    await api.org_b.agents.CreateAgent(request)
    in_b = await api.org_b.tools.ListTools(tool_service_pb2.ListToolsRequest())
    assert [tool.tool_name for tool in in_b.tools] == expected
    assert {tool.id for tool in in_b.tools}.isdisjoint(tool.name for tool in listed.tools)


async def test_base_tools_can_only_be_retagged(api: ApiHarness) -> None:
    await api.org_a.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(agent=agent_pb2.Agent(), include_base_tools=True)
    )
    listed = await api.org_a.tools.ListTools(
        tool_service_pb2.ListToolsRequest(tool_name="memory_insert")
    )
    (base,) = listed.tools

    error = await fails(
        api.org_a.tools.UpdateTool(
            tool_service_pb2.UpdateToolRequest(
                tool=tool_pb2.Tool(name=base.name, description="hijacked"),
                update_mask=mask("description"),
            )
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    failure = unpack_detail(rich_status(error), error_details_pb2.PreconditionFailure)
    assert failure is not None
    assert [v.type for v in failure.violations] == ["BUILT_IN_TOOL"]

    retagged = await api.org_a.tools.UpdateTool(
        tool_service_pb2.UpdateToolRequest(
            tool=tool_pb2.Tool(name=base.name, tags=["memory"]), update_mask=mask("tags")
        )
    )
    assert list(retagged.tags) == ["memory"]
    assert retagged.description == base.description

    upsert = await fails(
        api.org_a.tools.UpsertTool(
            tool_service_pb2.UpsertToolRequest(
                tool=tool_pb2.Tool(source_code=greeting_source(name="memory_insert"))
            )
        )
    )
    assert upsert.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await get_tool(api.org_a, base.name)).tool_type == tool_pb2.TOOL_TYPE_MEMORY


async def test_a_custom_tool_cannot_take_a_built_in_name(api: ApiHarness) -> None:
    """Otherwise the lazy registration of base tools would adopt it as the built-in."""
    created = await create_tool(api.org_a, greeting_source(name="greet"))
    attempts: list[Callable[[], Awaitable[Any]]] = [
        lambda: create_tool(api.org_a, greeting_source(name="send_message")),
        lambda: create_tool(
            api.org_a, greeting_source(), json_schema=struct({"name": "memory_insert"})
        ),
        lambda: api.org_a.tools.UpsertTool(
            tool_service_pb2.UpsertToolRequest(
                tool=tool_pb2.Tool(source_code=greeting_source(name="conversation_search"))
            )
        ),
        lambda: api.org_a.tools.UpdateTool(
            tool_service_pb2.UpdateToolRequest(
                tool=tool_pb2.Tool(
                    name=created.name, source_code=greeting_source(name="memory_replace")
                ),
                update_mask=mask("source_code"),
            )
        ),
    ]

    for attempt in attempts:
        error = await fails(attempt())
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        failure = unpack_detail(rich_status(error), error_details_pb2.PreconditionFailure)
        assert failure is not None
        assert [v.type for v in failure.violations] == ["BUILT_IN_TOOL"]

    assert await tool_names(api.org_a) == ["greet"]
    agent = await api.org_a.agents.CreateAgent(
        agent_service_pb2.CreateAgentRequest(
            agent=agent_pb2.Agent(agent_type=agent_pb2.AGENT_TYPE_HEARTBEAT)
        )
    )
    listed = await api.org_a.tools.ListTools(tool_service_pb2.ListToolsRequest())
    attached = {tool.tool_name: tool.tool_type for tool in listed.tools if tool.name in agent.tools}
    assert attached["send_message"] == tool_pb2.TOOL_TYPE_CORE
    assert created.name not in agent.tools
