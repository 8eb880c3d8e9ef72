"""Deriving a tool's function schema from its source, statically.

These pin down the conventions tool authors rely on (last function wins,
Google docstrings, annotation-to-JSON-Schema mapping) and, above all, that the
source is only parsed: nothing in it may run inside the server.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from engram.services.tool_schema import (
    MAX_TOOL_NAME_LENGTH,
    DerivedTool,
    ToolSchemaError,
    derive_tool_schema,
)


def one_param_tool(annotation: str, default: str = "", *, prelude: str = "") -> str:
    """Source of a tool taking a single documented parameter ``x``."""
    suffix = f" = {default}" if default else ""
    return (
        textwrap.dedent(prelude)
        + f'''
def tool(x: {annotation}{suffix}) -> str:
    """Do something.

    Args:
        x: The input.
    """
    return "ok"
'''
    )


def derive(source: str) -> DerivedTool:
    return derive_tool_schema(textwrap.dedent(source))


def prop(derived: DerivedTool, name: str = "x") -> dict[str, Any]:
    properties: dict[str, Any] = derived.json_schema["parameters"]["properties"]
    return properties[name]


def without_description(schema: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in schema.items() if key != "description"}


def required(derived: DerivedTool) -> list[str]:
    names: list[str] = derived.json_schema["parameters"]["required"]
    return names


# --------------------------------------------------------------------------- type mapping


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("str", {"type": "string"}),
        ("int", {"type": "integer"}),
        ("float", {"type": "number"}),
        ("bool", {"type": "boolean"}),
        ("list", {"type": "array"}),
        ("List[str]", {"type": "array", "items": {"type": "string"}}),
        ("list[int]", {"type": "array", "items": {"type": "integer"}}),
        ("typing.List[str]", {"type": "array", "items": {"type": "string"}}),
        ("Sequence[float]", {"type": "array", "items": {"type": "number"}}),
        ("collections.abc.Sequence[bool]", {"type": "array", "items": {"type": "boolean"}}),
        (
            "list[list[int]]",
            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
        ),
        ("set[str]", {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
        ("dict", {"type": "object"}),
        ("Dict[str, int]", {"type": "object", "additionalProperties": {"type": "integer"}}),
        (
            "dict[str, list[str]]",
            {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
        ),
        ("dict[str, Any]", {"type": "object"}),
        ("tuple", {"type": "array"}),
        ("tuple[int, ...]", {"type": "array", "items": {"type": "integer"}}),
        (
            "tuple[int, int]",
            {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer"}},
        ),
        (
            "Tuple[int, str]",
            {
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "items": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            },
        ),
        ('Literal["a", "b"]', {"type": "string", "enum": ["a", "b"]}),
        ("Literal[1, 2, 3]", {"type": "integer", "enum": [1, 2, 3]}),
        ("Literal[True]", {"type": "boolean", "enum": [True]}),
        ("Literal[1, 2.5]", {"type": "number", "enum": [1, 2.5]}),
        ('Literal[1, "a"]', {"enum": [1, "a"]}),
        ("Union[int, str]", {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        ("int | str", {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        ("Any", {}),
        ('"list[str]"', {"type": "array", "items": {"type": "string"}}),
        ('Annotated[int, "a count"]', {"type": "integer"}),
    ],
)
def test_annotation_maps_to_json_schema(annotation: str, expected: dict[str, Any]) -> None:
    derived = derive(one_param_tool(annotation))
    assert without_description(prop(derived)) == expected
    assert prop(derived)["description"] == "The input."
    assert required(derived) == ["x"]


def test_typing_aliases_are_followed() -> None:
    source = one_param_tool("L[int]", prelude="from typing import List as L\n")
    assert without_description(prop(derive(source))) == {
        "type": "array",
        "items": {"type": "integer"},
    }


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("Optional[int]", {"type": "integer"}),
        ("typing.Optional[int]", {"type": "integer"}),
        ("int | None", {"type": "integer"}),
        ("None | int", {"type": "integer"}),
        ("Union[int, None]", {"type": "integer"}),
        ("Optional[list[str]]", {"type": "array", "items": {"type": "string"}}),
        ("Union[int, str, None]", {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        ('Literal["a", None]', {"type": "string", "enum": ["a"]}),
    ],
)
def test_optional_forms_unwrap_and_are_not_required(
    annotation: str, expected: dict[str, Any]
) -> None:
    derived = derive(one_param_tool(annotation))
    assert without_description(prop(derived)) == expected
    assert required(derived) == []


# --------------------------------------------------------------------------- defaults


@pytest.mark.parametrize(
    ("annotation", "default", "expected_default"),
    [
        ("int", "3", 3),
        ("int", "-1", -1),
        ("float", "0.5", 0.5),
        ("str", '"hi"', "hi"),
        ("bool", "False", False),
        ("list[int]", "[1, 2]", [1, 2]),
        ("tuple[int, ...]", "(1, 2)", [1, 2]),
        ("dict[str, int]", '{"a": 1}', {"a": 1}),
    ],
)
def test_literal_defaults_are_recorded_and_make_the_parameter_optional(
    annotation: str, default: str, expected_default: object
) -> None:
    derived = derive(one_param_tool(annotation, default))
    assert prop(derived)["default"] == expected_default
    assert required(derived) == []


@pytest.mark.parametrize(
    ("annotation", "default"),
    [
        ("Optional[int]", "None"),  # null is not a value of the declared type
        ("str", "os.getcwd()"),  # not a literal, and must never be evaluated
        ("float", "1e999"),  # infinity is not valid JSON
        ("set[int]", "{1, 2}"),  # sets have no JSON form
    ],
)
def test_non_json_defaults_are_omitted_but_still_optional(annotation: str, default: str) -> None:
    derived = derive(one_param_tool(annotation, default))
    assert "default" not in prop(derived)
    assert required(derived) == []


def test_required_and_order_follow_the_signature() -> None:
    derived = derive(
        '''
        def search(query: str, limit: int = 10, /, page: int | None = None, *,
                   exact: bool, lang: str = "en") -> list[str]:
            """Search the archive.

            Args:
                query: What to look for.
                limit: Most results to return.
                page: Page number.
                exact: Match the whole phrase.
                lang: Language code.
            """
        '''
    )
    properties = derived.json_schema["parameters"]["properties"]
    assert list(properties) == ["query", "limit", "page", "exact", "lang"]
    assert required(derived) == ["query", "exact"]
    assert properties["limit"]["default"] == 10
    assert properties["lang"]["default"] == "en"


def test_reserved_parameters_are_hidden() -> None:
    derived = derive(
        '''
        def remember(self, agent_state: "AgentState", note: str) -> None:
            """Store a note.

            Args:
                note: Text to keep.
            """
        '''
    )
    assert list(derived.json_schema["parameters"]["properties"]) == ["note"]
    assert required(derived) == ["note"]


# --------------------------------------------------------------------------- classes


def test_class_in_source_becomes_a_nested_object() -> None:
    derived = derive(
        '''
        from pydantic import BaseModel, Field

        class Step(BaseModel):
            """One step of a plan.

            Attributes:
                title: Short title.
            """

            title: str
            minutes: int = 5
            note: str | None = None
            tags: list[str] = Field(default_factory=list, description="Labels.")
            owner: str = Field(..., description="Who does it.")
            _cache: dict = {}

        def plan(steps: list[Step]) -> str:
            """Make a plan.

            Args:
                steps: The steps, in order.
            """
        '''
    )
    assert without_description(prop(derived, "steps")) == {
        "type": "array",
        "items": {
            "type": "object",
            "description": "One step of a plan.",
            "properties": {
                "title": {"type": "string", "description": "Short title."},
                "minutes": {"type": "integer", "default": 5},
                "note": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}, "description": "Labels."},
                "owner": {"type": "string", "description": "Who does it."},
            },
            "required": ["title", "owner"],
        },
    }


def test_class_fields_include_source_base_classes() -> None:
    derived = derive(
        '''
        class Base:
            id: int

        class Item(Base):
            name: str = "x"

        def store(item: Item) -> None:
            """Store an item.

            Args:
                item: The item.
            """
        '''
    )
    schema = prop(derived, "item")
    assert list(schema["properties"]) == ["id", "name"]
    assert schema["required"] == ["id"]


def test_enum_class_becomes_an_enum() -> None:
    derived = derive(
        '''
        from enum import Enum

        class Color(str, Enum):
            RED = "red"
            GREEN = "green"

        def paint(color: Color) -> None:
            """Paint the wall.

            Args:
                color: Which paint.
            """
        '''
    )
    assert without_description(prop(derived, "color")) == {
        "type": "string",
        "enum": ["red", "green"],
    }


# --------------------------------------------------------------------------- functions


def test_last_top_level_function_is_the_tool() -> None:
    derived = derive(
        '''
        def _helper(value):
            return value * 2

        class Box:
            def method(self) -> None:
                """Not a tool."""

        async def fetch_page(url: str) -> str:
            """Fetch a web page.

            Args:
                url: Address of the page.
            """
            return _helper(url)
        '''
    )
    assert derived.name == "fetch_page"
    assert derived.json_schema["name"] == "fetch_page"
    assert derived.description == "Fetch a web page."
    assert derived.json_schema["description"] == derived.description


def test_name_of_exactly_the_maximum_length_is_accepted() -> None:
    name = "a" * MAX_TOOL_NAME_LENGTH
    derived = derive(
        f'''
        def {name}() -> None:
            """Do nothing."""
        '''
    )
    assert derived.name == name
    assert derived.json_schema["parameters"] == {"type": "object", "properties": {}, "required": []}


# --------------------------------------------------------------------------- docstrings


def test_docstring_sections_shape_the_description() -> None:
    derived = derive(
        '''
        def convert(amount: float, currency: str = "EUR") -> float:
            """Convert money between currencies.

            Uses the day's reference rates.

            Parameters:
                amount (float): How much to convert;
                    may be fractional.

                    Must not be negative.
                currency (Optional[dict[str, int]]): Target (ISO 4217).

            Returns:
                float: The converted amount.

            Raises:
                ValueError: For unknown currencies.

            Examples:
                convert(10.0, "USD")
            """
        '''
    )
    assert derived.description == (
        "Convert money between currencies.\n\n"
        "Uses the day's reference rates.\n\n"
        'Examples:\nconvert(10.0, "USD")'
    )
    assert prop(derived, "amount")["description"] == (
        "How much to convert; may be fractional. Must not be negative."
    )
    assert prop(derived, "currency")["description"] == "Target (ISO 4217)."


@pytest.mark.parametrize("header", ["Args", "Arguments", "Parameters"])
def test_args_section_aliases(header: str) -> None:
    derived = derive(
        f'''
        def greet(name: str) -> str:
            """Greet someone.

            {header}:
                name:
                    Who to greet.
            """
        '''
    )
    assert prop(derived, "name")["description"] == "Who to greet."


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("source", "fragments"),
    [
        ("x = 1\nclass A:\n    pass\n", ["no top-level function"]),
        ("def tool(x: int) -> None:\n    return None\n", ["'tool'", "no docstring"]),
        (
            'def tool(x) -> None:\n    """Do.\n\n    Args:\n        x: The x.\n    """\n',
            ["parameter 'x'", "'tool'", "no type annotation"],
        ),
        (
            "def tool(x: int, y: int) -> None:\n"
            '    """Do.\n\n    Args:\n        x: The x.\n    """\n',
            ["parameter 'y'", "not described"],
        ),
        ('def tool(*items: str) -> None:\n    """Do."""\n', ["*items", "'tool'"]),
        ('def tool(**options: str) -> None:\n    """Do."""\n', ["**options", "'tool'"]),
        ('def café() -> None:\n    """Do."""\n', ["'café'", "not a valid tool name"]),
        (
            f'def {"t" * (MAX_TOOL_NAME_LENGTH + 1)}() -> None:\n    """Do."""\n',
            ["49 characters", str(MAX_TOOL_NAME_LENGTH)],
        ),
        (
            'def tool() -> None:\n    """\n    Args:\n        x: nothing.\n    """\n',
            ["no summary"],
        ),
        (one_param_tool("Widget"), ["parameter 'x'", "'Widget'"]),
        (one_param_tool("Callable[[int], str]"), ["parameter 'x'", "Callable"]),
        (one_param_tool("None"), ["parameter 'x'", "None only"]),
        (one_param_tool("Optional[int, str]"), ["Optional takes exactly one type"]),
        (one_param_tool("Literal[len]"), ["literal values"]),
        (one_param_tool("Empty", prelude="class Empty:\n    pass\n"), ["'Empty'", "no annotated"]),
        (
            one_param_tool("Node", prelude="class Node:\n    child: 'Node'\n"),
            ["'Node'", "refers to itself"],
        ),
        ("def tool():\x00 pass\n", ["null bytes"]),
    ],
)
def test_invalid_sources_are_rejected_with_a_clear_message(
    source: str, fragments: list[str]
) -> None:
    with pytest.raises(ToolSchemaError) as caught:
        derive_tool_schema(source)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message
    assert caught.value.reason == "INVALID_TOOL_SOURCE"
    assert caught.value.field == "tool.source_code"
    assert isinstance(caught.value, ValueError)


def test_syntax_error_reports_the_line() -> None:
    source = 'def tool(x: int) -> None:\n    """Do."""\n    return (\n\n\ndef other(:\n'
    with pytest.raises(ToolSchemaError, match=r"syntax error on line \d+") as caught:
        derive_tool_schema(source)
    assert caught.value.line is not None
    assert str(caught.value.line) in str(caught.value)

    with pytest.raises(ToolSchemaError, match="syntax error on line 2") as caught:
        derive_tool_schema("x = 1\ndef broken(:\n    pass\n")
    assert caught.value.line == 2


def test_mutually_expanding_classes_are_capped() -> None:
    # Each class holds two of the next, so the schema would double at every level.
    classes = "".join(f"class C{i}:\n    a: C{i + 1}\n    b: C{i + 1}\n" for i in range(14))
    classes += "class C14:\n    leaf: int\n"
    with pytest.raises(ToolSchemaError, match="too large"):
        derive_tool_schema(one_param_tool("C0", prelude=classes))


# --------------------------------------------------------------------------- safety


def test_source_is_parsed_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    source = f'''
import os
import shutil
os.remove("/")
shutil.rmtree("/")
open({str(marker)!r}, "w").write("top level ran")
raise SystemExit("top level ran")

class Payload:
    size: int = open({str(marker)!r}, "w").write("class body ran")

def tool(
    path: str = open({str(marker)!r}, "w").name,
    payload: Payload | None = None,
) -> None:
    """Pretend to clean up.

    Args:
        path: Where.
        payload: What.
    """
    os.system("rm -rf /")
'''
    derived = derive_tool_schema(source)
    assert derived.name == "tool"
    assert "default" not in prop(derived, "path")
    assert required(derived) == []
    assert prop(derived, "payload")["properties"]["size"] == {"type": "integer"}
    assert not marker.exists()
