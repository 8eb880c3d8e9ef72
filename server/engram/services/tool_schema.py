"""Derive an OpenAI-style function schema for a custom tool from its Python source.

A custom tool arrives as source text written by a user.  The server has to
describe it to the model (name, description, parameter schema) long before a
sandbox ever runs it, and the server process itself must never run untrusted
code.  So everything here is static: the source is parsed with :mod:`ast`,
annotations are read as syntax trees, and defaults only go through
:func:`ast.literal_eval`.  Nothing is imported, evaluated or executed.

Conventions, kept compatible with what users of the reference server write:

* the *last* top-level ``def``/``async def`` in the module is the tool, so
  helper functions may sit above it;
* a Google-style docstring is required; its summary and free text become the
  tool description (an ``Examples:`` section is kept), and its ``Args:``
  section describes every parameter;
* ``self`` and ``agent_state`` are injected by the runtime and never exposed;
* types map to JSON Schema from the annotation's syntax; a class defined in the
  same source (a pydantic model, dataclass, TypedDict or Enum) becomes a nested
  schema.
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "MAX_TOOL_NAME_LENGTH",
    "RESERVED_PARAMETERS",
    "SOURCE_FIELD",
    "DerivedTool",
    "ToolSchemaError",
    "derive_tool_schema",
]

MAX_TOOL_NAME_LENGTH: Final = 48
# Parameters the runtime fills in itself; the model never sees or supplies them.
RESERVED_PARAMETERS: Final = frozenset({"self", "agent_state"})
# Where in a create/update request the offending text lives, for BadRequest details.
SOURCE_FIELD: Final = "tool.source_code"
# Upper bound on schema nodes built for one tool.  Classes that reference each
# other several times can otherwise blow a small source up into an enormous schema.
MAX_SCHEMA_NODES: Final = 2000

_NAME_PATTERN = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_SECTION_HEADER = re.compile(r"^([A-Za-z][A-Za-z ]*):\s*$")
_ENTRY_NAME = re.compile(r"(\*{0,2})([A-Za-z_]\w*)\s*")

# Google-style section titles, normalised to the few kinds this module cares
# about.  Any other recognised title is parsed (so it ends the previous section)
# but left out of the schema.
_SECTIONS: Final = {
    "args": "args",
    "arguments": "args",
    "parameters": "args",
    "params": "args",
    "keyword args": "args",
    "keyword arguments": "args",
    "attributes": "attributes",
    "examples": "examples",
    "example": "examples",
    "returns": "other",
    "return": "other",
    "yields": "other",
    "yield": "other",
    "raises": "other",
    "exceptions": "other",
    "note": "other",
    "notes": "other",
    "warning": "other",
    "warnings": "other",
    "see also": "other",
    "references": "other",
    "todo": "other",
}

_SCALARS: Final = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
_SEQUENCES: Final = frozenset(
    {"list", "List", "Sequence", "MutableSequence", "Iterable", "Collection"}
)
_SETS: Final = frozenset({"set", "Set", "frozenset", "FrozenSet", "AbstractSet", "MutableSet"})
_TUPLES: Final = frozenset({"tuple", "Tuple"})
_MAPPINGS: Final = frozenset({"dict", "Dict", "Mapping", "MutableMapping"})
_ENUM_BASES: Final = frozenset({"Enum", "IntEnum", "StrEnum"})
# Modules whose names may be imported under an alias (``from typing import List as L``).
_TYPING_MODULES: Final = frozenset({"typing", "typing_extensions", "collections.abc", "builtins"})


class ToolSchemaError(ValueError):
    """The tool source cannot be turned into a schema.

    The message names the function or parameter and says what to change; the
    gRPC layer reports it as a BadRequest violation on :attr:`field`.
    """

    reason = "INVALID_TOOL_SOURCE"

    def __init__(self, message: str, *, field: str = SOURCE_FIELD, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.line = line


@dataclass(frozen=True)
class DerivedTool:
    """What the model is told about a tool: its name, description and call schema."""

    name: str
    description: str
    json_schema: dict[str, Any]


def derive_tool_schema(source_code: str) -> DerivedTool:
    """Build the function schema of the tool defined by ``source_code``, without running it.

    Raises :class:`ToolSchemaError` when the source does not parse or the tool
    function breaks one of the conventions in the module docstring.
    """
    try:
        module = ast.parse(source_code, filename="<tool>", mode="exec")
    except SyntaxError as exc:
        line = exc.lineno
        where = f" on line {line}" if line else ""
        raise ToolSchemaError(
            f"tool source has a syntax error{where}: {exc.msg}", line=line
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        # Null bytes, absurd nesting: the parser gives up before producing a tree.
        raise ToolSchemaError(f"tool source cannot be parsed: {exc}") from None

    functions = [
        node for node in module.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    if not functions:
        raise ToolSchemaError(
            "tool source defines no top-level function; the last top-level "
            "`def` or `async def` in the source is the tool"
        )
    function = functions[-1]
    try:
        return _derive(function, module)
    except RecursionError:
        raise ToolSchemaError(
            f"function '{function.name}' uses types nested too deeply to describe",
            line=function.lineno,
        ) from None


def _derive(function: ast.FunctionDef | ast.AsyncFunctionDef, module: ast.Module) -> DerivedTool:
    name = function.name
    line = function.lineno
    if not _NAME_PATTERN.match(name):
        raise ToolSchemaError(
            f"function name '{name}' (line {line}) is not a valid tool name; use only ASCII "
            "letters, digits and underscores, not starting with a digit",
            line=line,
        )
    if len(name) > MAX_TOOL_NAME_LENGTH:
        raise ToolSchemaError(
            f"function name '{name}' (line {line}) is {len(name)} characters long; "
            f"tool names are limited to {MAX_TOOL_NAME_LENGTH}",
            line=line,
        )
    docstring = ast.get_docstring(function, clean=True)
    if not docstring or not docstring.strip():
        raise ToolSchemaError(
            f"function '{name}' (line {line}) has no docstring; add one that says what the "
            "tool does and describes each parameter in an Args: section",
            line=line,
        )
    parsed = _parse_docstring(docstring)
    if not parsed.description:
        raise ToolSchemaError(
            f"the docstring of function '{name}' (line {line}) has no summary; start it "
            "with a sentence saying what the tool does",
            line=line,
        )

    args = function.args
    if args.vararg is not None:
        raise ToolSchemaError(
            f"function '{name}' takes *{args.vararg.arg}; a tool may take only named "
            "parameters, so list each one explicitly",
            line=args.vararg.lineno,
        )
    if args.kwarg is not None:
        raise ToolSchemaError(
            f"function '{name}' takes **{args.kwarg.arg}; a tool may take only named "
            "parameters, so list each one explicitly",
            line=args.kwarg.lineno,
        )

    # Positional defaults belong to the last positional parameters; keyword-only
    # parameters carry their own (None where there is no default).
    positional = [*args.posonlyargs, *args.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
    defaults.extend(args.defaults)
    parameters = list(zip(positional, defaults, strict=True))
    parameters.extend(zip(args.kwonlyargs, args.kw_defaults, strict=True))

    context = _Context(function=name, classes=_source_classes(module), aliases=_aliases(module))
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter, default in parameters:
        if parameter.arg in RESERVED_PARAMETERS:
            continue
        where = f"parameter '{parameter.arg}' of function '{name}' (line {parameter.lineno})"
        if parameter.annotation is None:
            raise ToolSchemaError(
                f"{where} has no type annotation; annotate it, e.g. `{parameter.arg}: str`",
                line=parameter.lineno,
            )
        description = parsed.params.get(parameter.arg, "")
        if not description:
            raise ToolSchemaError(
                f"{where} is not described in the docstring; add `{parameter.arg}: ...` "
                "under Args:",
                line=parameter.lineno,
            )
        schema, nullable = _convert_required(parameter.annotation, context, where)
        prop = {**schema, "description": description}
        if default is not None:
            value = _literal_default(default)
            if value is not _NO_VALUE and value is not None:
                prop["default"] = value
        properties[parameter.arg] = prop
        if default is None and not nullable:
            required.append(parameter.arg)

    description = parsed.description
    json_schema: dict[str, Any] = {
        "name": name,
        "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required},
    }
    return DerivedTool(name=name, description=description, json_schema=json_schema)


# --------------------------------------------------------------------------- docstrings


@dataclass
class _Docstring:
    description: str
    params: dict[str, str]
    attributes: dict[str, str]


def _parse_docstring(text: str) -> _Docstring:
    """Split a cleaned Google-style docstring into description and documented names.

    Hand-rolled so the server needs no docstring library; it understands the
    subset tool authors use: section titles at the left margin, entries like
    ``name (type): text`` or ``name: text``, and continuation lines indented
    deeper than the entry.
    """
    intro: list[str] = []
    sections: list[tuple[str, str, list[str]]] = []  # (kind, title as written, body lines)
    for line in text.splitlines():
        header = _SECTION_HEADER.match(line)
        kind = _SECTIONS.get(header.group(1).strip().lower()) if header else None
        if header and kind:
            sections.append((kind, header.group(1).strip(), []))
        elif sections:
            sections[-1][2].append(line)
        else:
            intro.append(line)

    description = "\n".join(intro).strip()
    params: dict[str, str] = {}
    attributes: dict[str, str] = {}
    for kind, title, body in sections:
        if kind == "args":
            params.update(_parse_entries(body))
        elif kind == "attributes":
            attributes.update(_parse_entries(body))
        elif kind == "examples":
            examples = textwrap.dedent("\n".join(body)).strip()
            if examples:
                block = f"{title}:\n{examples}"
                description = f"{description}\n\n{block}" if description else block
    return _Docstring(description=description, params=params, attributes=attributes)


def _parse_entries(body: list[str]) -> dict[str, str]:
    """``name (type): text`` entries of one section, with continuation lines folded in."""
    entries: dict[str, list[str]] = {}
    base: int | None = None
    current: list[str] | None = None
    for line in body:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if base is None:
            base = indent
        entry = _parse_entry(line.strip()) if indent <= base else None
        if entry is not None:
            name, first = entry
            current = entries.setdefault(name, [])
            if first:
                current.append(first)
        elif current is not None:
            current.append(line.strip())
    return {name: " ".join(parts) for name, parts in entries.items()}


def _parse_entry(text: str) -> tuple[str, str] | None:
    """(name, text after the colon) when ``text`` opens an entry, else None."""
    match = _ENTRY_NAME.match(text)
    if not match:
        return None
    position = match.end()
    if position < len(text) and text[position] == "(":
        # Skip a parenthesised type, which may itself hold brackets or parentheses.
        depth = 0
        for index in range(position, len(text)):
            if text[index] in "([":
                depth += 1
            elif text[index] in ")]":
                depth -= 1
                if depth == 0:
                    position = index + 1
                    break
        else:
            return None
        while position < len(text) and text[position] == " ":
            position += 1
    if position >= len(text) or text[position] != ":":
        return None
    return match.group(2), text[position + 1 :].strip()


# --------------------------------------------------------------------------- types


@dataclass
class _Context:
    """What type conversion needs to know about the source as a whole."""

    function: str
    classes: dict[str, ast.ClassDef]
    aliases: dict[str, str]
    expanding: list[str] = field(default_factory=list)
    nodes: int = 0


def _source_classes(module: ast.Module) -> dict[str, ast.ClassDef]:
    """Top-level classes by name; a later definition replaces an earlier one, as at runtime."""
    return {node.name: node for node in module.body if isinstance(node, ast.ClassDef)}


def _aliases(module: ast.Module) -> dict[str, str]:
    """Local names bound by ``from typing import X as Y``, mapped to the typing name."""
    aliases: dict[str, str] = {}
    for node in module.body:
        if isinstance(node, ast.ImportFrom) and node.module in _TYPING_MODULES:
            for alias in node.names:
                if alias.asname and alias.asname != alias.name:
                    aliases[alias.asname] = alias.name
    return aliases


def _dotted(node: ast.expr) -> str | None:
    """``typing.List`` for an attribute chain of plain names, None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value)
        return f"{owner}.{node.attr}" if owner else None
    return None


def _type_name(node: ast.expr, context: _Context) -> str | None:
    """The typing-level name an annotation refers to (``t.List`` and aliases resolved)."""
    dotted = _dotted(node)
    if dotted is None:
        return None
    if "." not in dotted:
        return context.aliases.get(dotted, dotted)
    return dotted.rsplit(".", 1)[1]


def _subscript_items(node: ast.Subscript) -> list[ast.expr]:
    return list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]


def _describe(node: ast.expr) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # pragma: no cover - unparse handles every expression ast.parse yields
        return type(node).__name__


def _convert_required(node: ast.expr, context: _Context, where: str) -> tuple[dict[str, Any], bool]:
    """Schema and nullability of an annotation that must allow some non-null value."""
    schema, nullable = _convert(node, context, where)
    if schema is None:
        raise ToolSchemaError(f"{where} is annotated as None only; give it a real type")
    return schema, nullable


def _convert(node: ast.expr, context: _Context, where: str) -> tuple[dict[str, Any] | None, bool]:
    """JSON Schema of one annotation, and whether it admits None.

    A schema of None means the annotation admits only None (``None`` itself,
    ``Literal[None]``); unions drop it and mark the result nullable.
    """
    context.nodes += 1
    if context.nodes > MAX_SCHEMA_NODES:
        raise ToolSchemaError(
            f"{where} has a type whose schema is too large (over {MAX_SCHEMA_NODES} parts)"
        )

    if isinstance(node, ast.Constant):
        if node.value is None:
            return None, True
        if isinstance(node.value, str):
            # A quoted (forward-reference) annotation: parse the text, still without running it.
            try:
                inner = ast.parse(node.value.strip(), mode="eval").body
            except SyntaxError:
                raise ToolSchemaError(
                    f"{where} has a string annotation that is not a valid type: {node.value!r}"
                ) from None
            return _convert(inner, context, where)
        raise ToolSchemaError(f"{where} has an unsupported annotation '{_describe(node)}'")

    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right], context, where)

    if isinstance(node, ast.Subscript):
        return _convert_generic(node, context, where)

    name = _type_name(node, context)
    if name is None:
        raise ToolSchemaError(f"{where} has an unsupported annotation '{_describe(node)}'")
    # A bare name defined in the source shadows builtins and typing names, as in Python.
    if isinstance(node, ast.Name) and node.id in context.classes:
        return _class_schema(context.classes[node.id], context, where), False
    if name in _SCALARS:
        return {"type": _SCALARS[name]}, False
    if name == "Any":
        return {}, False
    if name in _SEQUENCES or name in _TUPLES:
        return {"type": "array"}, False
    if name in _SETS:
        return {"type": "array", "uniqueItems": True}, False
    if name in _MAPPINGS:
        return {"type": "object"}, False
    if name == "NoneType":
        return None, True
    raise ToolSchemaError(
        f"{where} has type '{_describe(node)}', which is neither a supported built-in type nor "
        "a class with annotated fields defined in the tool source"
    )


def _convert_generic(
    node: ast.Subscript, context: _Context, where: str
) -> tuple[dict[str, Any] | None, bool]:
    """Subscripted annotations: containers, Optional/Union, Literal and Annotated."""
    name = _type_name(node.value, context)
    items = _subscript_items(node)
    shown = _describe(node)

    if name == "Optional":
        if len(items) != 1:
            raise ToolSchemaError(f"{where}: Optional takes exactly one type, got '{shown}'")
        inner, _ = _convert(items[0], context, where)
        return inner, True
    if name == "Union":
        return _union(items, context, where)
    if name == "Literal":
        return _literal(items, where, shown)
    if name == "Annotated":
        return _convert(items[0], context, where)
    if name in _SEQUENCES or name in _SETS:
        if len(items) != 1:
            raise ToolSchemaError(f"{where}: '{shown}' should name exactly one element type")
        array: dict[str, Any] = {"type": "array", "items": _element(items[0], context, where)}
        if name in _SETS:
            array["uniqueItems"] = True
        return array, False
    if name in _TUPLES:
        return _tuple(items, context, where), False
    if name in _MAPPINGS:
        if len(items) != 2:
            raise ToolSchemaError(f"{where}: '{shown}' should name a key and a value type")
        mapping: dict[str, Any] = {"type": "object"}
        values = _element(items[1], context, where)
        if values:  # Any values need no constraint
            mapping["additionalProperties"] = values
        return mapping, False
    raise ToolSchemaError(f"{where} has an unsupported generic type '{shown}'")


def _element(node: ast.expr, context: _Context, where: str) -> dict[str, Any]:
    """Schema of a container's element type; None inside containers is simply dropped."""
    schema, _ = _convert_required(node, context, where)
    return schema


def _union(
    members: list[ast.expr], context: _Context, where: str
) -> tuple[dict[str, Any] | None, bool]:
    """``A | B | None``: None makes the whole optional, two or more others make an anyOf."""
    schemas: list[dict[str, Any]] = []
    nullable = False
    for member in members:
        schema, member_nullable = _convert(member, context, where)
        nullable = nullable or member_nullable
        if schema is not None and schema not in schemas:
            schemas.append(schema)
    if not schemas:
        return None, nullable
    if {} in schemas:
        return {}, nullable  # anything at all
    if len(schemas) == 1:
        return schemas[0], nullable
    return {"anyOf": schemas}, nullable


def _tuple(items: list[ast.expr], context: _Context, where: str) -> dict[str, Any]:
    """``tuple[X, ...]`` is a list of X; a fixed-length tuple also pins the length."""
    if len(items) == 2 and isinstance(items[1], ast.Constant) and items[1].value is Ellipsis:
        return {"type": "array", "items": _element(items[0], context, where)}
    if len(items) == 1 and isinstance(items[0], ast.Tuple) and not items[0].elts:
        return {"type": "array", "maxItems": 0}  # tuple[()]
    schemas: list[dict[str, Any]] = []
    for item in items:
        schema = _element(item, context, where)
        if schema not in schemas:
            schemas.append(schema)
    schema = {"type": "array", "minItems": len(items), "maxItems": len(items)}
    if {} not in schemas:
        schema["items"] = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return schema


def _literal(items: list[ast.expr], where: str, shown: str) -> tuple[dict[str, Any] | None, bool]:
    """``Literal[...]`` becomes an enum, typed when all values share one JSON type."""
    values: list[Any] = []
    kinds: list[str] = []
    nullable = False
    for item in items:
        try:
            value = ast.literal_eval(item)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ToolSchemaError(
                f"{where}: '{shown}' may only list literal values such as strings and numbers"
            ) from None
        if value is None:
            nullable = True
            continue
        kind = _json_kind(value)
        if kind is None:
            raise ToolSchemaError(
                f"{where}: '{shown}' may only list strings, numbers, booleans or None"
            )
        # 1 == True in Python, so compare by JSON type as well as by value.
        if (kind, value) not in zip(kinds, values, strict=True):
            values.append(value)
            kinds.append(kind)
    if not values:
        return None, nullable
    distinct = set(kinds)
    if distinct == {"integer", "number"}:
        distinct = {"number"}
    schema: dict[str, Any] = {"type": distinct.pop()} if len(distinct) == 1 else {}
    schema["enum"] = values
    return schema, nullable


def _json_kind(value: object) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float) and math.isfinite(value):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


# --------------------------------------------------------------------------- classes


def _class_schema(node: ast.ClassDef, context: _Context, where: str) -> dict[str, Any]:
    """Nested schema for a class defined in the tool source, read from its body alone."""
    if node.name in context.expanding:
        chain = " -> ".join([*context.expanding, node.name])
        raise ToolSchemaError(
            f"{where} uses class '{node.name}', which refers to itself ({chain}); "
            "recursive types cannot be described"
        )
    context.expanding.append(node.name)
    try:
        if _is_enum(node):
            return _enum_schema(node, where)
        return _model_schema(node, context, where)
    finally:
        context.expanding.pop()


def _is_enum(node: ast.ClassDef) -> bool:
    return any((_dotted(base) or "").rsplit(".", 1)[-1] in _ENUM_BASES for base in node.bases)


def _enum_schema(node: ast.ClassDef, where: str) -> dict[str, Any]:
    """An Enum's literal member values, as a Literal of the same values would give."""
    members: list[ast.expr] = []
    for statement in node.body:
        if (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
            and not statement.targets[0].id.startswith("_")
        ):
            members.append(statement.value)
    shown = f"enum class '{node.name}'"
    if not members:
        raise ToolSchemaError(f"{where} uses {shown}, which defines no members")
    schema, _ = _literal(members, where, shown)
    if schema is None:
        raise ToolSchemaError(f"{where} uses {shown}, whose only value is None")
    return _with_doc(schema, node)


def _model_schema(node: ast.ClassDef, context: _Context, where: str) -> dict[str, Any]:
    """Object schema from annotated class attributes (pydantic, dataclass, TypedDict style)."""
    fields = _class_fields(node, context, set())
    if not fields:
        raise ToolSchemaError(
            f"{where} uses class '{node.name}', which has no annotated fields to describe"
        )
    docs = _parse_docstring(ast.get_docstring(node) or "").attributes
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, (annotation, value) in fields.items():
        field_where = f"field '{name}' of class '{node.name}' (used by {where})"
        schema, _ = _convert_required(annotation, context, field_where)
        prop = dict(schema)
        has_default, default, description = _field_default(value)
        description = description or docs.get(name, "")
        if description:
            prop["description"] = description
        if default is not _NO_VALUE and default is not None:
            prop["default"] = default
        properties[name] = prop
        if not has_default:
            required.append(name)
    return _with_doc({"type": "object", "properties": properties, "required": required}, node)


def _class_fields(
    node: ast.ClassDef, context: _Context, seen: set[str]
) -> dict[str, tuple[ast.expr, ast.expr | None]]:
    """Annotated attributes, inherited ones from source base classes first."""
    seen.add(node.name)
    fields: dict[str, tuple[ast.expr, ast.expr | None]] = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in context.classes and base.id not in seen:
            fields.update(_class_fields(context.classes[base.id], context, seen))
    for statement in node.body:
        if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
            continue
        name = statement.target.id
        if name.startswith("_") or _is_class_var(statement.annotation, context):
            continue  # private attributes and class-level constants are not fields
        fields[name] = (statement.annotation, statement.value)
    return fields


def _is_class_var(annotation: ast.expr, context: _Context) -> bool:
    target = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    return _type_name(target, context) == "ClassVar"


def _field_default(value: ast.expr | None) -> tuple[bool, object, str]:
    """(has a default, its JSON value or _NO_VALUE, description) of a class attribute.

    Understands plain literal defaults and ``Field(...)``/``field(...)`` calls,
    where ``...`` or the lack of any default means the field is required.
    """
    if value is None:
        return False, _NO_VALUE, ""
    if not isinstance(value, ast.Call) or _dotted(value.func) not in _FIELD_FACTORIES:
        return True, _literal_default(value), ""
    keywords = {keyword.arg: keyword.value for keyword in value.keywords if keyword.arg}
    description = ""
    described = keywords.get("description")
    if isinstance(described, ast.Constant) and isinstance(described.value, str):
        description = described.value.strip()
    default = value.args[0] if value.args else keywords.get("default")
    if default is None:
        has_factory = "default_factory" in keywords
        return has_factory, _NO_VALUE, description
    if isinstance(default, ast.Constant) and default.value is Ellipsis:
        return False, _NO_VALUE, description
    return True, _literal_default(default), description


_FIELD_FACTORIES: Final = frozenset(
    {"Field", "field", "pydantic.Field", "dataclasses.field", "attrs.field", "attr.ib"}
)


def _with_doc(schema: dict[str, Any], node: ast.ClassDef) -> dict[str, Any]:
    summary = _parse_docstring(ast.get_docstring(node) or "").description
    return {**schema, "description": summary} if summary else schema


# --------------------------------------------------------------------------- defaults


class _NoValue:
    """Marks a default that exists but cannot be written as JSON."""

    def __repr__(self) -> str:
        return "<no JSON value>"


_NO_VALUE: Final = _NoValue()


def _literal_default(node: ast.expr) -> object:
    """The JSON form of a literal default, or _NO_VALUE when it is not a plain literal."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NO_VALUE
    return _to_json(value)


def _to_json(value: object) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NO_VALUE
    if isinstance(value, list | tuple):
        items = [_to_json(item) for item in value]
        return _NO_VALUE if any(item is _NO_VALUE for item in items) else items
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            return _NO_VALUE
        converted = {key: _to_json(item) for key, item in value.items()}
        return _NO_VALUE if any(v is _NO_VALUE for v in converted.values()) else converted
    return _NO_VALUE  # sets, bytes, complex numbers, Ellipsis
