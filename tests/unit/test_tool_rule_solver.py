"""The tool rule solver: allowed tools per step, continuation decisions, prompts."""

from __future__ import annotations

from typing import Any

import pytest

from engram.services.runtime.tool_rule_solver import (
    STOP_END_TURN,
    STOP_MAX_STEPS,
    STOP_TOOL_RULE,
    AllowedTools,
    ChildRule,
    ConditionalRule,
    Continuation,
    ContinueRule,
    InitRule,
    MaxCountRule,
    ParentRule,
    RequiredBeforeExitRule,
    RequiresApprovalRule,
    TerminalRule,
    ToolRuleSolver,
    parse_rules,
    violation_message,
)

TOOLS = ["search", "fetch", "summarize", "save", "send_message"]


def solver(*rules: dict[str, Any]) -> ToolRuleSolver:
    return ToolRuleSolver.from_rules(list(rules))


def allowed(s: ToolRuleSolver, available: list[str] | None = None) -> tuple[str, ...]:
    return s.allowed_tools(TOOLS if available is None else available).names


def init(tool: str, **args: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"tool_name": tool}
    if args:
        body["prefilled_args"] = args
    return {"init": body}


def child(tool: str, *children: str, child_args: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"tool_name": tool, "children": list(children)}
    if child_args:
        body["child_args"] = child_args
    return {"child": body}


def parent(tool: str, *children: str) -> dict[str, Any]:
    return {"parent": {"tool_name": tool, "children": list(children)}}


def conditional(
    tool: str, mapping: dict[str, str], default: str = "", strict: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {"tool_name": tool, "child_output_mapping": mapping}
    if default:
        body["default_child"] = default
    if strict:
        body["require_output_mapping"] = True
    return {"conditional": body}


def max_count(tool: str, limit: int | str) -> dict[str, Any]:
    return {"max_count_per_step": {"tool_name": tool, "max_count_limit": limit}}


def simple(kind: str, tool: str) -> dict[str, Any]:
    return {kind: {"tool_name": tool}}


# ------------------------------------------------------------------------ parsing


def test_parse_rules_builds_one_typed_rule_per_kind_in_order() -> None:
    rules = parse_rules(
        [
            init("search", query="x"),
            simple("terminal", "send_message"),
            simple("continue_loop", "fetch"),
            child("search", "fetch", child_args={"fetch": {"url": "u"}}),
            parent("fetch", "summarize"),
            conditional("summarize", {"ok": "save"}, default="send_message", strict=True),
            max_count("search", 2),
            simple("required_before_exit", "save"),
            simple("requires_approval", "save"),
        ]
    )
    assert rules == (
        InitRule("search", {"query": "x"}),
        TerminalRule("send_message"),
        ContinueRule("fetch"),
        ChildRule("search", ("fetch",), {"fetch": {"url": "u"}}),
        ParentRule("fetch", ("summarize",)),
        ConditionalRule("summarize", (("ok", "save"),), "send_message", True),
        MaxCountRule("search", 2),
        RequiredBeforeExitRule("save"),
        RequiresApprovalRule("save"),
    )


def test_parse_rules_skips_unknown_kinds_and_unusable_entries() -> None:
    rules = parse_rules(
        [
            {"run_twice": {"tool_name": "search"}},
            {"terminal": None},
            {"terminal": {"tool_name": "  "}},
            max_count("search", "lots"),
            max_count("search", 0),
            simple("terminal", "send_message"),
        ]
    )
    assert rules == (TerminalRule("send_message"),)


@pytest.mark.parametrize(("raw", "limit"), [(3, 3), ("3", 3), ("2.0", 2), (4.0, 4)])
def test_max_count_limit_accepts_int_or_numeric_string(raw: object, limit: int) -> None:
    (rule,) = parse_rules([{"max_count_per_step": {"tool_name": "search", "max_count_limit": raw}}])
    assert rule == MaxCountRule("search", limit)


def test_parse_rules_normalises_children_and_conditional_fields() -> None:
    rules = parse_rules(
        [
            child("search", "fetch", "fetch", "save"),
            conditional("fetch", {"1": "save"}, default=""),
        ]
    )
    assert rules == (
        ChildRule("search", ("fetch", "save")),
        ConditionalRule("fetch", (("1", "save"),), None, False),
    )


# ------------------------------------------------------------ each rule kind alone


def test_no_rules_allow_every_available_tool() -> None:
    s = solver()
    result = s.allowed_tools(TOOLS)
    assert result == AllowedTools(names=tuple(TOOLS))
    s.record_call("search", "r")
    assert allowed(s) == tuple(TOOLS)


def test_init_rule_forces_the_first_call_with_its_prefilled_args() -> None:
    s = solver(init("fetch", url="https://example.com", depth=1))
    first = s.allowed_tools(TOOLS)
    assert first.names == ("fetch",)
    assert first.forced == "fetch"
    assert first.forced_args == {"url": "https://example.com", "depth": 1}
    assert not first.fell_back
    s.record_call("fetch", "page")
    after = s.allowed_tools(TOOLS)
    assert after.names == tuple(TOOLS)
    assert after.forced is None
    assert after.prefilled_args == {}


@pytest.mark.parametrize(
    "rule",
    [
        simple("terminal", "send_message"),
        simple("continue_loop", "search"),
        simple("required_before_exit", "save"),
        simple("requires_approval", "save"),
    ],
)
def test_loop_only_rules_never_restrict_the_set(rule: dict[str, Any]) -> None:
    s = solver(rule)
    assert allowed(s) == tuple(TOOLS)
    for tool in TOOLS:
        s.record_call(tool, "x")
        assert allowed(s) == tuple(TOOLS)


def test_child_rule_limits_the_next_call_to_its_children() -> None:
    s = solver(child("search", "summarize", "fetch"))
    assert allowed(s) == tuple(TOOLS)
    s.record_call("search", "hits")
    assert allowed(s) == ("fetch", "summarize")  # available order, not rule order
    s.record_call("fetch", "page")
    assert allowed(s) == tuple(TOOLS)


def test_child_rule_with_one_child_forces_it_with_child_args() -> None:
    s = solver(child("search", "fetch", child_args={"fetch": {"url": "first"}}))
    s.record_call("search", "hits")
    result = s.allowed_tools(TOOLS)
    assert result.names == ("fetch",)
    assert result.forced == "fetch"
    assert result.forced_args == {"url": "first"}


def test_child_args_are_reported_for_every_allowed_child() -> None:
    s = solver(child("search", "fetch", "save", child_args={"save": {"key": "k"}}))
    s.record_call("search", "hits")
    result = s.allowed_tools(TOOLS)
    assert result.names == ("fetch", "save")
    assert result.forced is None
    assert result.forced_args is None
    assert result.prefilled_args == {"save": {"key": "k"}}


def test_prefilled_args_are_copies() -> None:
    s = solver(init("fetch", opts={"depth": 1}))
    first = s.allowed_tools(TOOLS)
    assert first.forced_args is not None
    first.forced_args["opts"]["depth"] = 99
    assert s.allowed_tools(TOOLS).forced_args == {"opts": {"depth": 1}}


def test_parent_rule_gates_children_to_the_step_right_after_it() -> None:
    s = solver(parent("fetch", "summarize", "save"))
    assert allowed(s) == ("search", "fetch", "send_message")
    s.record_call("search", "hits")
    assert allowed(s) == ("search", "fetch", "send_message")
    s.record_call("fetch", "page")
    assert allowed(s) == ("summarize", "save")
    s.record_call("summarize", "short")
    assert allowed(s) == ("search", "fetch", "send_message")


def test_conditional_rule_maps_the_output_to_the_next_tool() -> None:
    s = solver(conditional("search", {"found": "fetch", "empty": "send_message"}))
    s.record_call("search", "found")
    result = s.allowed_tools(TOOLS)
    assert (result.names, result.forced, result.error) == (("fetch",), "fetch", None)
    s.record_call("search", "empty")
    assert allowed(s) == ("send_message",)


def test_conditional_rule_ignores_calls_of_other_tools() -> None:
    s = solver(conditional("search", {"found": "fetch"}, strict=True))
    s.record_call("save", "found")
    result = s.allowed_tools(TOOLS)
    assert (result.names, result.error) == (tuple(TOOLS), None)


def test_conditional_without_match_uses_the_default_child() -> None:
    s = solver(conditional("search", {"found": "fetch"}, default="summarize"))
    s.record_call("search", "something else")
    assert allowed(s) == ("summarize",)


def test_conditional_without_match_or_default_allows_everything() -> None:
    s = solver(conditional("search", {"found": "fetch"}))
    s.record_call("search", "something else")
    result = s.allowed_tools(TOOLS)
    assert (result.names, result.fell_back, result.error) == (tuple(TOOLS), False, None)


def test_strict_conditional_without_match_is_an_error_and_falls_back() -> None:
    s = solver(conditional("search", {"found": "fetch", "empty": "send_message"}, strict=True))
    s.record_call("search", "timeout")
    result = s.allowed_tools(TOOLS)
    assert result.names == tuple(TOOLS)
    assert result.fell_back
    assert result.error is not None
    assert "search" in result.error
    assert "'timeout'" in result.error
    assert "'found', 'empty'" in result.error


def test_strict_conditional_prefers_its_default_child() -> None:
    s = solver(conditional("search", {"found": "fetch"}, default="save", strict=True))
    s.record_call("search", "timeout")
    result = s.allowed_tools(TOOLS)
    assert (result.names, result.error) == (("save",), None)


def test_conditional_with_no_output_counts_as_no_match() -> None:
    s = solver(conditional("search", {"found": "fetch"}, default="save"))
    s.record_call("search", None)
    assert allowed(s) == ("save",)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("1", "fetch"),
        ("1.0", "save"),  # the exact key wins over the numerically equal one
        ("1.00", "fetch"),  # no exact key: first key with the same number
        (" 2 ", "summarize"),
        ("TRUE", "send_message"),
        ("False", "search"),
    ],
)
def test_conditional_keys_compare_exactly_then_as_booleans_and_numbers(
    output: str, expected: str
) -> None:
    mapping = {"1": "fetch", "1.0": "save", "2": "summarize", "true": "send_message"}
    mapping["false"] = "search"
    s = solver(conditional("search", mapping))
    s.record_call("search", output)
    assert allowed(s) == (expected,)


def test_conditional_text_keys_do_not_match_loosely() -> None:
    s = solver(conditional("search", {"Found": "fetch"}, default="save"))
    s.record_call("search", "found")
    assert allowed(s) == ("save",)


def test_max_count_removes_the_tool_after_the_limit_in_a_turn() -> None:
    s = solver(max_count("search", "2"))
    s.record_call("search", "a")
    assert "search" in allowed(s)
    s.record_call("fetch", "b")
    s.record_call("search", "c")
    assert allowed(s) == ("fetch", "summarize", "save", "send_message")
    s.record_call("fetch", "d")
    assert "search" not in allowed(s)


# ------------------------------------------------------------------- combinations


def test_init_then_child_chain() -> None:
    s = solver(
        init("search"),
        child("search", "fetch"),
        child("fetch", "summarize", "save"),
        simple("terminal", "send_message"),
    )
    assert s.allowed_tools(TOOLS).forced == "search"
    s.record_call("search", "hits")
    assert s.allowed_tools(TOOLS).forced == "fetch"
    s.record_call("fetch", "page")
    assert allowed(s) == ("summarize", "save")
    s.record_call("save", "ok")
    assert allowed(s) == tuple(TOOLS)


def test_init_wins_over_parent_gating_on_the_first_step() -> None:
    s = solver(init("summarize"), parent("fetch", "summarize"))
    assert allowed(s) == ("summarize",)


def test_parent_and_child_rules_intersect() -> None:
    s = solver(child("fetch", "summarize", "save"), parent("fetch", "save"))
    assert allowed(s) == ("search", "fetch", "summarize", "send_message")
    s.record_call("fetch", "page")
    assert s.allowed_tools(TOOLS).forced == "save"


def test_child_and_max_count_intersect() -> None:
    s = solver(child("search", "search", "fetch"), max_count("search", 1))
    s.record_call("search", "hits")
    assert allowed(s) == ("fetch",)


def test_conditional_and_child_on_the_same_tool_intersect() -> None:
    s = solver(child("search", "fetch", "save"), conditional("search", {"ok": "save"}))
    s.record_call("search", "ok")
    assert allowed(s) == ("save",)


def test_max_count_across_several_calls_with_a_chain() -> None:
    s = solver(child("fetch", "summarize", "fetch"), max_count("fetch", 3))
    for _ in range(2):
        s.record_call("fetch", "page")
        assert allowed(s) == ("fetch", "summarize")
    s.record_call("fetch", "page")
    assert s.allowed_tools(TOOLS).forced == "summarize"


# ----------------------------------------------------------------------- fallback


def test_rules_that_leave_nothing_fall_back_to_all_tools() -> None:
    s = solver(child("search", "save"), max_count("save", 1))
    s.record_call("save", "ok")
    s.record_call("search", "hits")
    result = s.allowed_tools(TOOLS)
    assert (result.names, result.fell_back, result.forced) == (tuple(TOOLS), True, None)


def test_children_that_are_not_available_fall_back_to_all_tools() -> None:
    s = solver(child("search", "browse"))
    s.record_call("search", "hits")
    result = s.allowed_tools(["search", "fetch"])
    assert (result.names, result.fell_back) == (("search", "fetch"), True)


def test_unavailable_init_tool_falls_back_and_a_single_tool_is_forced() -> None:
    s = solver(init("browse", url="x"))
    result = s.allowed_tools(["send_message"])
    assert result == AllowedTools(names=("send_message",), forced="send_message", fell_back=True)


def test_available_tools_are_deduplicated_and_empty_stays_empty() -> None:
    s = solver()
    assert allowed(s, ["fetch", "search", "fetch"]) == ("fetch", "search")
    assert s.allowed_tools([]) == AllowedTools(names=())


# ------------------------------------------------------------------- turn state


def test_reset_starts_a_new_turn() -> None:
    s = solver(init("search"), max_count("fetch", 1), simple("required_before_exit", "save"))
    s.record_call("search", "hits")
    s.record_call("fetch", "page")
    s.record_call("save", "ok")
    assert "fetch" not in allowed(s)
    assert s.missing_before_exit() == []
    s.reset()
    assert s.history == ()
    assert allowed(s) == ("search",)
    s.record_call("search", "hits")
    assert "fetch" in allowed(s)
    assert s.missing_before_exit() == ["save"]


def test_history_and_call_count() -> None:
    s = solver()
    s.record_call("search", "a")
    s.record_call("fetch")
    s.record_call("search", "b")
    assert [(c.tool_name, c.output) for c in s.history] == [
        ("search", "a"),
        ("fetch", None),
        ("search", "b"),
    ]
    assert (s.call_count("search"), s.call_count("save")) == (2, 0)


# ------------------------------------------------------------------ per-tool facts


def test_per_tool_queries() -> None:
    s = solver(
        simple("terminal", "send_message"),
        simple("continue_loop", "search"),
        child("fetch", "summarize"),
        conditional("summarize", {"ok": "save"}),
        max_count("save", 2),
        simple("requires_approval", "save"),
    )
    assert [t for t in TOOLS if s.is_terminal(t)] == ["send_message"]
    assert s.terminal_tools() == frozenset({"send_message"})
    assert [t for t in TOOLS if s.must_continue(t)] == ["search", "fetch", "summarize", "save"]
    assert [t for t in TOOLS if s.requires_approval(t)] == ["save"]


def test_missing_before_exit_in_rule_order_and_only_for_available_tools() -> None:
    s = solver(
        simple("required_before_exit", "save"),
        simple("required_before_exit", "summarize"),
        simple("required_before_exit", "save"),
        simple("required_before_exit", "archive"),
    )
    assert s.missing_before_exit() == ["save", "summarize", "archive"]
    assert s.missing_before_exit(TOOLS) == ["save", "summarize"]
    s.record_call("save", "ok")
    assert s.missing_before_exit(TOOLS) == ["summarize"]
    s.record_call("summarize", "ok")
    assert s.missing_before_exit(TOOLS) == []


# ------------------------------------------------- heartbeat loop: decide_continuation

HEARTBEAT_RULES = (
    simple("terminal", "send_message"),
    child("search", "fetch"),
    conditional("fetch", {"ok": "save"}),
    max_count("summarize", 3),
    simple("continue_loop", "save"),
)


@pytest.mark.parametrize(
    ("tool", "heartbeat", "last", "violated", "expected"),
    [
        # row 1: the last step always stops with max_steps
        ("search", True, True, False, (False, STOP_MAX_STEPS)),
        ("send_message", True, True, False, (False, STOP_MAX_STEPS)),
        ("archive", False, True, True, (False, STOP_MAX_STEPS)),
        # row 2: a violation continues
        ("archive", False, False, True, (True, None)),
        # row 3: terminal stops; tool_rule only when a heartbeat was asked for
        ("send_message", True, False, False, (False, STOP_TOOL_RULE)),
        ("send_message", False, False, False, (False, STOP_END_TURN)),
        # row 4: child / conditional / max-count / continue rules force continuation
        ("search", False, False, False, (True, None)),
        ("fetch", False, False, False, (True, None)),
        ("summarize", False, False, False, (True, None)),
        ("save", False, False, False, (True, None)),
        # row 5: otherwise the model's heartbeat decides
        ("archive", True, False, False, (True, None)),
        ("archive", False, False, False, (False, STOP_END_TURN)),
    ],
)
def test_decide_continuation_table(
    tool: str, heartbeat: bool, last: bool, violated: bool, expected: tuple[bool, str | None]
) -> None:
    s = solver(*HEARTBEAT_RULES)
    if not violated:
        s.record_call(tool, "ok")
    decision = s.decide_continuation(tool, heartbeat, last, rule_violated=violated)
    assert (decision.continue_, decision.stop_reason) == expected


def test_decide_continuation_reasons() -> None:
    s = solver(*HEARTBEAT_RULES)
    assert s.decide_continuation("x", False, False, rule_violated=True).reason is not None
    rule_reason = s.decide_continuation("search", False, False).reason
    assert rule_reason is not None
    assert "search" in rule_reason
    continue_reason = s.decide_continuation("save", False, False).reason
    assert continue_reason is not None
    assert "save" in continue_reason
    assert s.decide_continuation("archive", True, False) == Continuation(True)


@pytest.mark.parametrize(("tool", "heartbeat"), [("send_message", True), ("archive", False)])
def test_uncalled_required_tool_overrides_a_stop(tool: str, heartbeat: bool) -> None:
    s = solver(simple("terminal", "send_message"), simple("required_before_exit", "save"))
    s.record_call(tool, "ok")
    decision = s.decide_continuation(tool, heartbeat, False)
    assert (decision.continue_, decision.stop_reason) == (True, None)
    assert decision.reason is not None
    assert "save" in decision.reason
    s.record_call("save", "ok")
    s.record_call(tool, "ok")
    stopped = s.decide_continuation(tool, heartbeat, False)
    expected = STOP_TOOL_RULE if heartbeat else STOP_END_TURN
    assert (stopped.continue_, stopped.stop_reason) == (False, expected)


def test_uncalled_required_tool_does_not_outlast_the_last_step() -> None:
    s = solver(simple("required_before_exit", "save"))
    s.record_call("archive", "ok")
    assert s.decide_continuation("archive", False, True) == Continuation(False, STOP_MAX_STEPS)


def test_required_tool_that_is_not_attached_does_not_hold_the_turn() -> None:
    s = solver(simple("terminal", "send_message"), simple("required_before_exit", "archive"))
    s.record_call("send_message", "sent")
    held = s.decide_continuation("send_message", False, False)
    assert held.continue_
    free = s.decide_continuation("send_message", False, False, available=TOOLS)
    assert free == Continuation(False, STOP_END_TURN)


# ------------------------------------------- native loop: decide_native_continuation


@pytest.mark.parametrize(
    ("tool", "last", "violated", "required", "expected"),
    [
        # row 1: no tool call ends the turn, unless a required tool is missing
        (None, False, False, False, (False, STOP_END_TURN)),
        (None, False, False, True, (True, None)),
        (None, True, False, True, (False, STOP_END_TURN)),
        # row 2: the last step stops with max_steps
        ("archive", True, False, False, (False, STOP_MAX_STEPS)),
        ("send_message", True, False, False, (False, STOP_MAX_STEPS)),
        ("archive", True, True, False, (False, STOP_MAX_STEPS)),
        # row 3: a violation continues
        ("archive", False, True, False, (True, None)),
        # row 4: terminal stops with tool_rule, unless a required tool is missing
        ("send_message", False, False, False, (False, STOP_TOOL_RULE)),
        ("send_message", False, False, True, (True, None)),
        # row 5: any other call continues
        ("archive", False, False, False, (True, None)),
        ("search", False, False, False, (True, None)),
    ],
)
def test_decide_native_continuation_table(
    tool: str | None,
    last: bool,
    violated: bool,
    required: bool,
    expected: tuple[bool, str | None],
) -> None:
    rules = [simple("terminal", "send_message"), child("search", "fetch")]
    if required:
        rules.append(simple("required_before_exit", "save"))
    s = solver(*rules)
    if tool is not None and not violated:
        s.record_call(tool, "ok")
    decision = s.decide_native_continuation(tool, last, rule_violated=violated)
    assert (decision.continue_, decision.stop_reason) == expected


def test_native_continuation_reasons() -> None:
    s = solver(child("search", "fetch"), simple("required_before_exit", "save"))
    assert s.decide_native_continuation("archive", False) == Continuation(True)
    s.record_call("search", "hits")
    search_reason = s.decide_native_continuation("search", False).reason
    assert search_reason is not None
    assert "search" in search_reason
    missing_reason = s.decide_native_continuation(None, False).reason
    assert missing_reason is not None
    assert "save" in missing_reason


# ------------------------------------------------------------------------ prompts

ALL_KINDS = (
    init("search"),
    simple("terminal", "send_message"),
    simple("continue_loop", "fetch"),
    child("search", "fetch", "summarize"),
    parent("fetch", "summarize"),
    conditional("summarize", {"ok": "save", "retry": "fetch"}, default="send_message"),
    max_count("search", 1),
    max_count("fetch", 3),
    simple("required_before_exit", "save"),
    simple("requires_approval", "save"),
)


def test_rule_prompts_one_non_empty_line_per_rule_naming_its_tool() -> None:
    s = solver(*ALL_KINDS)
    prompts = s.rule_prompts()
    assert len(prompts) == len(ALL_KINDS)
    for prompt, rule in zip(prompts, s.rules, strict=True):
        assert prompt.strip()
        assert "\n" not in prompt
        assert rule.tool_name in prompt


def test_rule_prompts_carry_the_rule_details() -> None:
    prompts = solver(*ALL_KINDS).rule_prompts()
    assert "fetch, summarize" in prompts[3]
    assert '"ok" -> save; "retry" -> fetch' in prompts[5]
    assert "send_message" in prompts[5]
    assert "once" in prompts[6]
    assert "3 times" in prompts[7]


@pytest.mark.parametrize(
    ("strict", "fragment"), [(True, "error"), (False, "pick freely")], ids=["strict", "lenient"]
)
def test_conditional_prompt_describes_what_happens_without_a_match(
    strict: bool, fragment: str
) -> None:
    (prompt,) = solver(conditional("search", {"ok": "save"}, strict=strict)).rule_prompts()
    assert fragment in prompt


def test_no_rules_no_prompts() -> None:
    assert solver().rule_prompts() == []


def test_rules_about_a_violation() -> None:
    s = solver(
        child("search", "fetch"), simple("terminal", "send_message"), parent("save", "fetch")
    )
    s.record_call("search", "hits")
    about = s.rules_about("summarize")
    assert about == [s.rules[0].prompt()]
    assert s.rules_about("fetch") == [s.rules[0].prompt(), s.rules[2].prompt()]


def test_violation_message_names_the_tool_and_the_allowed_ones() -> None:
    message = violation_message("save", ["fetch", "summarize"])
    assert "save" in message
    assert "fetch, summarize" in message
    empty = violation_message("save", [])
    assert "save" in empty
    assert "fetch" not in empty
