"""Checking tool rules when they are stored (the agent loop enforces them later).

A rule is stored as ``{"<kind>": {fields}}``, the JSON form of the
``ToolRule`` oneof with proto field names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engram.services.errors import FieldViolation

RULE_KINDS = frozenset(
    {
        "init",
        "terminal",
        "continue_loop",
        "child",
        "parent",
        "conditional",
        "max_count_per_step",
        "required_before_exit",
        "requires_approval",
    }
)


def validate_tool_rules(rules: Sequence[dict[str, Any]], prefix: str) -> list[FieldViolation]:
    """Every problem with ``rules``, each naming the rule's index and field."""
    violations: list[FieldViolation] = []
    init_rules = 0
    for index, rule in enumerate(rules):
        where = f"{prefix}[{index}]"
        if len(rule) != 1 or next(iter(rule)) not in RULE_KINDS:
            violations.append(FieldViolation(where, "must set exactly one kind of rule"))
            continue
        kind, body = next(iter(rule.items()))
        body = body or {}
        if not str(body.get("tool_name", "")).strip():
            violations.append(FieldViolation(f"{where}.{kind}.tool_name", "is required"))
        if kind == "init":
            init_rules += 1
        if kind in ("child", "parent") and not body.get("children"):
            violations.append(FieldViolation(f"{where}.{kind}.children", "needs at least one tool"))
        if kind == "child":
            unknown = set(body.get("child_args", {})) - set(body.get("children", []))
            if unknown:
                violations.append(
                    FieldViolation(
                        f"{where}.child.child_args",
                        f"names tools that are not children: {', '.join(sorted(unknown))}",
                    )
                )
        if kind == "conditional" and not body.get("child_output_mapping"):
            violations.append(
                FieldViolation(f"{where}.conditional.child_output_mapping", "must not be empty")
            )
        if kind == "max_count_per_step" and int(body.get("max_count_limit", 0)) < 1:
            violations.append(
                FieldViolation(f"{where}.max_count_per_step.max_count_limit", "must be at least 1")
            )
    if init_rules > 1:
        violations.append(FieldViolation(prefix, "at most one init rule is allowed"))
    return violations
