"""Enforcing an agent's tool rules inside one turn of the agent loop.

The rules were checked when they were stored (``engram.services.tool_rules``);
this module only *applies* them.  The loop builds one ``ToolRuleSolver`` per
turn (or calls ``reset`` when a new turn starts), and on every step:

1. asks ``allowed_tools`` which tools the model may call next, and forces the
   call when exactly one is left (with any prefilled arguments);
2. after the model answers, checks the call against that set (a call outside
   it is not run: the model gets ``violation_message`` instead);
3. stops for approval when ``requires_approval`` says so;
4. runs the tool and reports it with ``record_call`` (rule-violating calls are
   *not* recorded, so they never satisfy a rule);
5. asks ``decide_continuation`` (heartbeat loop) or
   ``decide_native_continuation`` (native tool-calling loop) whether to take
   another step, and with which stop reason to end otherwise.

Everything here is pure and synchronous: no I/O, no database, no protos.  The
rule semantics follow the reference system (see the shared spec, §2 and §4).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeAlias, TypeVar

STOP_END_TURN = "end_turn"
STOP_MAX_STEPS = "max_steps"
STOP_TOOL_RULE = "tool_rule"

JsonObject: TypeAlias = dict[str, Any]


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class InitRule:
    """The first tool call of a turn must be ``tool_name``."""

    kind: ClassVar[str] = "init"
    tool_name: str
    prefilled_args: JsonObject | None = field(default=None, hash=False)

    def prompt(self) -> str:
        return f"Your first tool call in every turn must be {self.tool_name}."


@dataclass(frozen=True)
class TerminalRule:
    """Calling ``tool_name`` ends the turn."""

    kind: ClassVar[str] = "terminal"
    tool_name: str

    def prompt(self) -> str:
        return f"Calling {self.tool_name} ends your turn and hands control back to the user."


@dataclass(frozen=True)
class ContinueRule:
    """Calling ``tool_name`` always gives the agent another step."""

    kind: ClassVar[str] = "continue_loop"
    tool_name: str

    def prompt(self) -> str:
        return f"After {self.tool_name} runs you always get another step, so keep going."


@dataclass(frozen=True)
class ChildRule:
    """Right after ``tool_name``, only ``children`` may be called."""

    kind: ClassVar[str] = "child"
    tool_name: str
    children: tuple[str, ...]
    child_args: dict[str, JsonObject] = field(default_factory=dict, hash=False)

    def prompt(self) -> str:
        return (
            f"Right after {self.tool_name}, your next tool call must be one of: "
            f"{', '.join(self.children)}."
        )


@dataclass(frozen=True)
class ParentRule:
    """``children`` may only be called as the very next call after ``tool_name``."""

    kind: ClassVar[str] = "parent"
    tool_name: str
    children: tuple[str, ...]

    def prompt(self) -> str:
        return (
            f"{', '.join(self.children)} can only be called as the step directly "
            f"after {self.tool_name}; at any other point they are unavailable."
        )


@dataclass(frozen=True)
class ConditionalRule:
    """The output of ``tool_name`` picks the next tool.

    ``mapping`` keeps the stored order of ``(output value, next tool)`` pairs.
    When nothing matches, ``default_child`` is next; without one, any tool
    (or, with ``require_output_mapping``, an error the loop reports).
    """

    kind: ClassVar[str] = "conditional"
    tool_name: str
    mapping: tuple[tuple[str, str], ...]
    default_child: str | None = None
    require_output_mapping: bool = False

    def next_tool(self, output: str | None) -> str | None:
        """The tool the output selects, the default child, or None (no choice made).

        An exact string match wins; only when no key matches exactly are keys
        compared as booleans or numbers, as the proto documents (map keys are
        strings, so ``"1"`` must still match an output of ``"1.0"``).
        """
        matched = _match_output(self.mapping, output)
        return matched if matched is not None else self.default_child

    def prompt(self) -> str:
        cases = "; ".join(f'"{value}" -> {tool}' for value, tool in self.mapping)
        if self.default_child:
            otherwise = f"any other result -> {self.default_child}"
        elif self.require_output_mapping:
            otherwise = "any other result is an error"
        else:
            otherwise = "after any other result you may pick freely"
        return f"The result of {self.tool_name} decides your next tool: {cases}; {otherwise}."


@dataclass(frozen=True)
class MaxCountRule:
    """``tool_name`` may be called at most ``limit`` times in one turn."""

    kind: ClassVar[str] = "max_count_per_step"
    tool_name: str
    limit: int

    def prompt(self) -> str:
        times = "once" if self.limit == 1 else f"{self.limit} times"
        return f"You may call {self.tool_name} at most {times} per turn."


@dataclass(frozen=True)
class RequiredBeforeExitRule:
    """The turn cannot end before ``tool_name`` has been called."""

    kind: ClassVar[str] = "required_before_exit"
    tool_name: str

    def prompt(self) -> str:
        return f"Call {self.tool_name} at least once before you end your turn."


@dataclass(frozen=True)
class RequiresApprovalRule:
    """Each call of ``tool_name`` waits for a client's approval."""

    kind: ClassVar[str] = "requires_approval"
    tool_name: str

    def prompt(self) -> str:
        return f"Calls to {self.tool_name} pause until the user approves them."


ToolRule: TypeAlias = (
    InitRule
    | TerminalRule
    | ContinueRule
    | ChildRule
    | ParentRule
    | ConditionalRule
    | MaxCountRule
    | RequiredBeforeExitRule
    | RequiresApprovalRule
)


class _AboutATool(Protocol):
    @property
    def tool_name(self) -> str: ...


_R = TypeVar("_R", bound=_AboutATool)


# ------------------------------------------------------------------------- parsing


def parse_rules(stored: Iterable[Mapping[str, Any]]) -> tuple[ToolRule, ...]:
    """Typed rules from their stored ``{"<kind>": {fields}}`` form, in order.

    Nothing is rejected: the rules were validated when stored, so anything
    unreadable here (an unknown kind, a missing tool name, an unusable limit)
    can only come from an older or newer writer and is skipped rather than
    failing the agent's turn.
    """
    rules: list[ToolRule] = []
    for entry in stored:
        if not isinstance(entry, Mapping):
            continue
        for kind, body in entry.items():
            rule = _parse_one(str(kind), body if isinstance(body, Mapping) else {})
            if rule is not None:
                rules.append(rule)
    return tuple(rules)


def _parse_one(kind: str, body: Mapping[str, Any]) -> ToolRule | None:
    name = str(body.get("tool_name") or "").strip()
    if not name:
        return None
    if kind == "init":
        return InitRule(name, _json_object(body.get("prefilled_args")) or None)
    if kind == "terminal":
        return TerminalRule(name)
    if kind == "continue_loop":
        return ContinueRule(name)
    if kind == "required_before_exit":
        return RequiredBeforeExitRule(name)
    if kind == "requires_approval":
        return RequiresApprovalRule(name)
    return _parse_structured(kind, name, body)


def _parse_structured(kind: str, name: str, body: Mapping[str, Any]) -> ToolRule | None:
    """The kinds that carry more than a tool name."""
    if kind == "child":
        return ChildRule(name, _names(body.get("children")), _child_args(body.get("child_args")))
    if kind == "parent":
        return ParentRule(name, _names(body.get("children")))
    if kind == "conditional":
        return _parse_conditional(name, body)
    if kind == "max_count_per_step":
        limit = _whole_number(body.get("max_count_limit"))
        return MaxCountRule(name, limit) if limit is not None and limit >= 1 else None
    return None


def _parse_conditional(name: str, body: Mapping[str, Any]) -> ConditionalRule:
    raw = body.get("child_output_mapping")
    pairs = raw.items() if isinstance(raw, Mapping) else ()
    mapping = tuple((str(value), str(tool)) for value, tool in pairs if str(tool).strip())
    default = str(body.get("default_child") or "").strip() or None
    return ConditionalRule(name, mapping, default, _flag(body.get("require_output_mapping")))


def _names(value: Any) -> tuple[str, ...]:
    """Distinct, non-empty tool names from a JSON list, in order."""
    if not isinstance(value, list | tuple):
        return ()
    names = (str(item).strip() for item in value)
    return tuple(dict.fromkeys(name for name in names if name))


def _json_object(value: Any) -> JsonObject | None:
    return dict(value) if isinstance(value, Mapping) else None


def _child_args(value: Any) -> dict[str, JsonObject]:
    if not isinstance(value, Mapping):
        return {}
    return {str(child): dict(args) for child, args in value.items() if isinstance(args, Mapping)}


def _whole_number(value: Any) -> int | None:
    """An int from an int, an integral float, or a numeric string (JSON int64 style)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    number = _as_float(value) if isinstance(value, str) else value
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        return int(number)
    return None


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


# ------------------------------------------------------------------ output matching


def _match_output(mapping: Sequence[tuple[str, str]], output: str | None) -> str | None:
    """The tool whose key equals ``output``: exactly first, then by value."""
    if output is None:
        return None
    for key, tool in mapping:
        if key == output:
            return tool
    for key, tool in mapping:
        if _same_value(key, output):
            return tool
    return None


def _same_value(key: str, output: str) -> bool:
    """Whether two strings denote the same boolean, number or (trimmed) text."""
    left, right = key.strip(), output.strip()
    bools = (_as_bool(left), _as_bool(right))
    if None not in bools:
        return bools[0] == bools[1]
    numbers = (_as_float(left), _as_float(right))
    if None not in numbers:
        return numbers[0] == numbers[1]
    return left == right


def _as_bool(text: str) -> bool | None:
    lowered = text.lower()
    return True if lowered == "true" else False if lowered == "false" else None


def _as_float(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# ------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RecordedCall:
    """One tool call of the current turn, as the rules need it."""

    tool_name: str
    output: str | None = None


@dataclass(frozen=True)
class AllowedTools:
    """What the model may call on the next step.

    ``names`` follows the order of the ``available`` tools it came from.
    ``forced`` is set when exactly one tool is left, so the loop can force the
    call (tool_choice) instead of hoping the model picks it.  ``prefilled_args``
    holds, per allowed tool, the arguments a rule fixes for it (they override
    what the model passes).  ``fell_back`` says the rules left nothing and all
    available tools were allowed instead.  ``error`` is set when a strict
    conditional rule found no outcome for the last output: the loop must report
    it rather than carry on silently.
    """

    names: tuple[str, ...]
    forced: str | None = None
    prefilled_args: dict[str, JsonObject] = field(default_factory=dict, hash=False)
    fell_back: bool = False
    error: str | None = None

    def __contains__(self, tool_name: object) -> bool:
        return tool_name in self.names

    @property
    def forced_args(self) -> JsonObject | None:
        """The prefilled arguments of the forced tool, if any."""
        return None if self.forced is None else self.prefilled_args.get(self.forced)


@dataclass(frozen=True)
class Continuation:
    """Whether the loop takes another step, and why it stops if it does not.

    ``stop_reason`` is set exactly when ``continue_`` is false.  ``reason`` is a
    short explanation for the model when a rule (rather than the model's own
    request) keeps the loop going; the loop puts it in the heartbeat message.
    """

    continue_: bool
    stop_reason: str | None = None
    reason: str | None = None


def _stop(stop_reason: str) -> Continuation:
    return Continuation(False, stop_reason)


def _go(reason: str | None = None) -> Continuation:
    return Continuation(True, None, reason)


_VIOLATION_REASON = "The last tool call broke a tool rule and did not run; call an allowed tool."


def violation_message(tool_name: str, allowed: Sequence[str]) -> str:
    """What the model reads when it called a tool outside the allowed set."""
    if not allowed:
        return f"Tool rule violation: {tool_name} cannot be called now, and no tool is open."
    return (
        f"Tool rule violation: {tool_name} cannot be called at this point. "
        f"Call one of these instead: {', '.join(allowed)}."
    )


# -------------------------------------------------------------------------- solver


class ToolRuleSolver:
    """An agent's tool rules plus the tool calls made so far in the current turn."""

    def __init__(self, rules: Iterable[ToolRule] = ()) -> None:
        self._rules = tuple(rules)
        self._calls: list[RecordedCall] = []
        self._init = self._of(InitRule)
        self._child = self._of(ChildRule)
        self._parent = self._of(ParentRule)
        self._conditional = self._of(ConditionalRule)
        self._max_count = self._of(MaxCountRule)

    @classmethod
    def from_rules(cls, rules: Sequence[Mapping[str, Any]]) -> ToolRuleSolver:
        """A solver for rules in their stored JSON form (see ``parse_rules``)."""
        return cls(parse_rules(rules))

    def _of(self, rule_type: type[_R]) -> tuple[_R, ...]:
        return tuple(rule for rule in self._rules if isinstance(rule, rule_type))

    def _named(self, rule_type: type[_R], tool_name: str) -> Iterator[_R]:
        return (rule for rule in self._of(rule_type) if rule.tool_name == tool_name)

    @property
    def rules(self) -> tuple[ToolRule, ...]:
        return self._rules

    @property
    def history(self) -> tuple[RecordedCall, ...]:
        """The calls recorded in this turn, oldest first."""
        return tuple(self._calls)

    # ------------------------------------------------------------------ state

    def record_call(self, tool_name: str, output: str | None = None) -> None:
        """Note a call that ran, with its return text (what conditional rules read).

        ``output`` is the tool's own return value as text, not the loop's
        status/time envelope around it.
        """
        self._calls.append(RecordedCall(tool_name, output))

    def reset(self) -> None:
        """Forget the calls: rules such as init and max-count count per turn."""
        self._calls.clear()

    def call_count(self, tool_name: str) -> int:
        return sum(1 for call in self._calls if call.tool_name == tool_name)

    # ---------------------------------------------------------- allowed tools

    def allowed_tools(self, available: Sequence[str]) -> AllowedTools:
        """The tools the model may call next, out of ``available``.

        First step with an init rule: only the init tools.  Otherwise each
        child, conditional, max-count and parent rule yields a set and the
        result is their intersection with ``available``; terminal, continue,
        required and approval rules act in the loop, not here.  A result with
        nothing left falls back to every available tool, as in the reference:
        a stuck agent is worse than one that bends a rule.
        """
        pool = tuple(dict.fromkeys(available))
        permitted, error = self._permitted(frozenset(pool))
        names = tuple(name for name in pool if name in permitted)
        fell_back = not names and bool(pool)
        if fell_back:
            names = pool
        return AllowedTools(
            names=names,
            forced=names[0] if len(names) == 1 else None,
            prefilled_args=self._prefilled(names),
            fell_back=fell_back,
            error=error,
        )

    def _permitted(self, pool: frozenset[str]) -> tuple[frozenset[str], str | None]:
        if not self._calls:
            return self._first_step(pool), None
        return self._later_step(pool)

    def _first_step(self, pool: frozenset[str]) -> frozenset[str]:
        """Init tools if there are any; else everything but parent-gated children."""
        if self._init:
            return frozenset(rule.tool_name for rule in self._init)
        gated = {child for rule in self._parent for child in rule.children}
        return pool - gated

    def _later_step(self, pool: frozenset[str]) -> tuple[frozenset[str], str | None]:
        last = self._calls[-1]
        allowed = set(pool)
        for rule in self._child:
            if rule.tool_name == last.tool_name:
                allowed &= set(rule.children)
        error = self._apply_conditionals(last, allowed)
        for limit in self._max_count:
            if self.call_count(limit.tool_name) >= limit.limit:
                allowed.discard(limit.tool_name)
        for parent in self._parent:
            if parent.tool_name == last.tool_name:
                allowed &= set(parent.children)
            else:
                allowed -= set(parent.children)
        return frozenset(allowed), error

    def _apply_conditionals(self, last: RecordedCall, allowed: set[str]) -> str | None:
        """Narrow ``allowed`` in place by the conditional rules on the last call."""
        error: str | None = None
        for rule in self._conditional:
            if rule.tool_name != last.tool_name:
                continue
            chosen = rule.next_tool(last.output)
            if chosen is not None:
                allowed &= {chosen}
            elif rule.require_output_mapping:
                allowed.clear()
                error = error or _unmapped_output_error(rule, last.output)
        return error

    def _prefilled(self, names: tuple[str, ...]) -> dict[str, JsonObject]:
        """Rule-fixed arguments for the allowed tools (deep copies: the loop may merge)."""
        found: dict[str, JsonObject] = {}
        for tool, args in self._prefill_sources():
            if tool in names and tool not in found:
                found[tool] = copy.deepcopy(args)
        return found

    def _prefill_sources(self) -> Iterator[tuple[str, JsonObject]]:
        if not self._calls:
            for init in self._init:
                if init.prefilled_args:
                    yield init.tool_name, init.prefilled_args
            return
        last = self._calls[-1].tool_name
        for rule in self._child:
            if rule.tool_name == last:
                yield from rule.child_args.items()

    # -------------------------------------------------------------- per tool

    def is_terminal(self, tool_name: str) -> bool:
        return any(True for _ in self._named(TerminalRule, tool_name))

    def terminal_tools(self) -> frozenset[str]:
        """Tools that end the turn (the loop leaves the heartbeat flag off their schema)."""
        return frozenset(rule.tool_name for rule in self._of(TerminalRule))

    def must_continue(self, tool_name: str) -> bool:
        """Whether a rule on ``tool_name`` demands another step after it runs.

        A continue rule says so directly.  A child or conditional rule says
        which tool comes next, so the loop must give the model that step.  The
        reference treats a max-count rule the same way (it groups it with the
        child rules), and so do we.
        """
        return self._has_follow_up_rule(tool_name) or any(
            True for _ in self._named(ContinueRule, tool_name)
        )

    def _has_follow_up_rule(self, tool_name: str) -> bool:
        follow_ups: tuple[_AboutATool, ...] = (*self._child, *self._conditional, *self._max_count)
        return any(rule.tool_name == tool_name for rule in follow_ups)

    def requires_approval(self, tool_name: str) -> bool:
        return any(True for _ in self._named(RequiresApprovalRule, tool_name))

    def missing_before_exit(self, available: Sequence[str] | None = None) -> list[str]:
        """Required-before-exit tools not called yet in this turn, in rule order.

        With ``available``, a required tool that is not attached to the agent
        is ignored: it could never be called, so waiting for it would only
        burn steps until ``max_steps``.
        """
        called = {call.tool_name for call in self._calls}
        attached = None if available is None else set(available)
        required = dict.fromkeys(rule.tool_name for rule in self._of(RequiredBeforeExitRule))
        return [
            name
            for name in required
            if name not in called and (attached is None or name in attached)
        ]

    # ----------------------------------------------------------- continuation

    def decide_continuation(
        self,
        tool_name: str,
        requested_heartbeat: bool,
        step_is_last: bool,
        *,
        rule_violated: bool = False,
        available: Sequence[str] | None = None,
    ) -> Continuation:
        """After a tool call in the heartbeat loop: take another step or stop?

        Call it after ``record_call`` (a violating call is not recorded, and
        ``rule_violated`` is set instead).  Rows, first match wins:

        1. last step: stop ``max_steps``; the step budget is a hard limit,
           whatever the model or the rules want.
        2. rule violated: continue; the call did not run and the model must get
           a chance to make an allowed one.
        3. terminal tool: stop; ``tool_rule`` when the model asked for a
           heartbeat (the rule overrode it), else ``end_turn`` (it meant to stop).
        4. child / conditional / max-count / continue rule on the tool:
           continue; the rules expect a next call.
        5. otherwise: continue exactly when the model asked for a heartbeat;
           stop ``end_turn`` when it did not.

        Then, if the decision is to stop (rows 3 and 5 only, never row 1) while
        a required-before-exit tool is still uncalled, continue instead: the
        turn may not end yet, even after a terminal tool.
        """
        if step_is_last:
            return _stop(STOP_MAX_STEPS)
        if rule_violated:
            return _go(_VIOLATION_REASON)
        if self.is_terminal(tool_name):
            stop = STOP_TOOL_RULE if requested_heartbeat else STOP_END_TURN
            return self._unless_required_missing(_stop(stop), available)
        if self.must_continue(tool_name):
            return _go(self._follow_up_reason(tool_name))
        if requested_heartbeat:
            return _go()
        return self._unless_required_missing(_stop(STOP_END_TURN), available)

    def decide_native_continuation(
        self,
        tool_name: str | None,
        step_is_last: bool,
        *,
        rule_violated: bool = False,
        available: Sequence[str] | None = None,
    ) -> Continuation:
        """After a step of the native tool-calling loop (no heartbeats).

        Here a tool call always means "more to do" and a plain reply means
        "done".  ``tool_name`` is None when the model made no tool call.  Rows,
        first match wins:

        1. no tool call: stop ``end_turn``, unless a required-before-exit tool
           is uncalled and this is not the last step (then continue and tell
           the model what is missing: it tried to finish too early).
        2. last step: stop ``max_steps``; the budget is a hard limit.
        3. rule violated: continue, so the model can make an allowed call.
        4. terminal tool: stop ``tool_rule``, unless a required-before-exit
           tool is uncalled (then continue).
        5. any other tool call: continue (with a reason when a rule demands it).
        """
        if tool_name is None:
            return self._unless_required_missing(_stop(STOP_END_TURN), available, step_is_last)
        if step_is_last:
            return _stop(STOP_MAX_STEPS)
        if rule_violated:
            return _go(_VIOLATION_REASON)
        if self.is_terminal(tool_name):
            return self._unless_required_missing(_stop(STOP_TOOL_RULE), available)
        return _go(self._follow_up_reason(tool_name) if self.must_continue(tool_name) else None)

    def _unless_required_missing(
        self,
        stop: Continuation,
        available: Sequence[str] | None,
        step_is_last: bool = False,
    ) -> Continuation:
        missing = [] if step_is_last else self.missing_before_exit(available)
        if not missing:
            return stop
        return _go(f"The turn cannot end yet; still call: {', '.join(missing)}.")

    def _follow_up_reason(self, tool_name: str) -> str:
        if self._has_follow_up_rule(tool_name):
            return f"A tool rule on {tool_name} expects another tool call now."
        return f"{tool_name} always gives you another step; continue."

    # ---------------------------------------------------------------- prompts

    def rule_prompts(self) -> list[str]:
        """One line per rule, in stored order, for the context's tool-usage section."""
        return [rule.prompt() for rule in self._rules]

    def rules_about(self, tool_name: str) -> list[str]:
        """Prompts of the rules that explain a violation by ``tool_name``.

        Those are the rules on the tool itself, on the last call (which may
        have restricted what comes next), or gating the tool as a child.
        """
        last = self._calls[-1].tool_name if self._calls else None
        return [
            rule.prompt()
            for rule in self._rules
            if rule.tool_name in (tool_name, last) or tool_name in getattr(rule, "children", ())
        ]


def _unmapped_output_error(rule: ConditionalRule, output: str | None) -> str:
    shown = "no output" if output is None else f"output {output!r}"
    outcomes = ", ".join(repr(value) for value, _ in rule.mapping)
    return (
        f"{rule.tool_name} returned {shown}, which matches none of the outcomes its "
        f"conditional tool rule lists ({outcomes}) and the rule has no default."
    )
