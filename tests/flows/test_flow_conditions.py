"""``when`` conditions: CEL over ``input`` and ``nodes``, true/false/error."""

from __future__ import annotations

import pytest
from spine_flows import (
    MAX_CONDITION_LENGTH,
    ConditionError,
    FlowValidationError,
    InvalidCondition,
    compile_condition,
    evaluate_condition,
)

INPUT = {"amount": 12000, "name": "Ana", "tags": ["vip", "new"], "term_months": 24}
NODES = {"eddie": {"score": 0.81, "decision": "review"}, "zoe": {"complete": True}}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("nodes.eddie.score > 0.7", True),
        ("nodes.eddie.score > 0.9", False),
        ("input.amount >= 10000", True),
        ("input.amount >= 20000", False),
        ('nodes.eddie.decision == "review"', True),
        ('nodes.eddie.decision == "approve"', False),
        ("nodes.zoe.complete && input.term_months < 36", True),
        ('"vip" in input.tags', True),
        ("input.tags.exists(t, t == 'new')", True),
        ("input.tags.all(t, size(t) > 3)", False),
        ("has(nodes.review)", False),
        ("has(nodes.review) && nodes.review.ok", False),
        ('nodes["eddie"].score * 100.0 > 80.0', True),
        ("nodes.exists(k, k == 'zoe')", True),
        ("type(input.amount) == int", True),
        ("input.amount > 100.5", True),  # int against double compares by value
    ],
)
def test_true_and_false(expr: str, expected: bool) -> None:
    assert compile_condition(expr).evaluate(INPUT, NODES) is expected


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("nodes.review.ok", "no such key 'review'"),
        ("input.missing > 1", "no such key 'missing'"),
        ("input.amount", "evaluated to int 12000, not a boolean"),
        ("nodes.eddie.decision", "evaluated to str 'review', not a boolean"),
        ("input.name > 3", "No such overload"),
        ("input.amount / 0 > 1", "division by zero"),
    ],
)
def test_runtime_errors(expr: str, fragment: str) -> None:
    with pytest.raises(ConditionError) as info:
        compile_condition(expr).evaluate(INPUT, NODES)
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"condition {expr!r}: ")


def test_deep_data_is_refused_before_reaching_the_native_evaluator() -> None:
    deep: dict[str, object] = {}
    cursor = deep
    for _ in range(300):
        cursor["k"] = {}
        cursor = cursor["k"]  # type: ignore[assignment]
    with pytest.raises(ConditionError, match="nested deeper"):
        compile_condition("has(input.k)").evaluate(deep, {})


def test_unconvertible_value_is_a_condition_error() -> None:
    with pytest.raises(ConditionError):
        compile_condition("input.x == 1").evaluate({"x": object()}, {})


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("input.amount >", "invalid condition (line 1, column 15)"),
        ("(input.amount", "invalid condition"),
        ('input.name == "Ana', "invalid condition"),
        ("amount > 10", "unknown variable 'amount'"),
        ("input.x > limit", "unknown variable 'limit'"),
        ("input.tags.all(t, t == other)", "unknown variable 'other'"),
        ("", "empty condition"),
        ("   ", "empty condition"),
        ("input.a" + " || input.a" * (MAX_CONDITION_LENGTH // 10), "the limit is"),
    ],
)
def test_compile_errors(expr: str, fragment: str) -> None:
    with pytest.raises(InvalidCondition) as info:
        compile_condition(expr)
    err = info.value
    assert fragment in err.message
    # usable both where flows are validated and where conditions run
    assert isinstance(err, FlowValidationError) and isinstance(err, ConditionError)
    assert err.problems[0].field == "when"


def test_non_string_condition() -> None:
    with pytest.raises(InvalidCondition):
        compile_condition(42)  # type: ignore[arg-type]


def test_node_references_are_found_statically() -> None:
    cond = compile_condition('nodes.eddie.score > 0.7 && nodes["my-node"].ok && input.x == 1')
    assert cond.node_refs == frozenset({"eddie", "my-node"})
    assert cond.dynamic_nodes is False


def test_node_references_inside_strings_are_not_references() -> None:
    cond = compile_condition("input.s == \"nodes.zz\" || input.s == r'nodes.q'")
    assert cond.node_refs == frozenset()


def test_dynamic_node_access_is_flagged() -> None:
    assert compile_condition("nodes[input.which].ok").dynamic_nodes is True
    assert compile_condition("size(nodes) > 1").dynamic_nodes is True


def test_compiled_conditions_are_cached() -> None:
    assert compile_condition("input.amount > 1") is compile_condition("input.amount > 1")


def test_evaluate_condition_matches_the_orchestrator_port() -> None:
    assert evaluate_condition("nodes.eddie.score > 0.7", INPUT, NODES) is True
    with pytest.raises(ConditionError):
        evaluate_condition("nodes.nope.x", INPUT, NODES)


def test_no_python_escape_hatches() -> None:
    for expr in ("__import__('os')", "input.__class__", "open('/etc/passwd')"):
        with pytest.raises(ConditionError):
            compile_condition(expr).evaluate(INPUT, NODES)


def test_only_named_node_outputs_reach_the_evaluator() -> None:
    nodes = {"eddie": {"score": 0.9}, "other": {"blob": object()}}
    assert compile_condition("nodes.eddie.score > 0.7").evaluate({}, nodes) is True
    with pytest.raises(ConditionError):  # reaching into every node converts every output
        compile_condition("size(nodes) > 0").evaluate({}, nodes)
