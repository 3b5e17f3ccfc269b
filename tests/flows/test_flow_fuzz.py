"""Whatever comes in, the validator answers with a flow or a FlowValidationError."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spine_contracts import FlowDefinition
from spine_flows import (
    ConditionError,
    FlowValidationError,
    compile_condition,
    flow_version,
    load_flow_text,
    to_yaml,
    validate_flow_dict,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
json_like: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
# what JSON carries unchanged (the validator rejects the rest, see test_flow_validation)
json_safe: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)

ids = st.sampled_from(["a", "b", "c", "zoe", "eddie"])
junk_ids = st.sampled_from(["", "x y", "a"]) | json_like
conditions = st.one_of(
    st.sampled_from(
        [
            "nodes.a.ok",
            "input.x > 1",
            "nodes.b.score > 0.7 && input.y",
            "bad syntax (",
            'nodes["c"].v == "r"',
            "other > 1",
            "nodes[input.k].z",
        ]
    ),
    st.text(max_size=30),
)
configs = st.fixed_dictionaries(
    {},
    optional={
        "timeout": st.sampled_from([1, 2.5, 30]),
        "retries": st.integers(0, 5),
        "max_turns": st.integers(1, 5),
        "required_fields": st.lists(st.text(max_size=5), max_size=3),
        "extra": json_safe,
    },
)
# Mostly sensible values with some junk mixed in, so every pass of the validator is reached
node_values = {
    "id": st.one_of(ids, ids, ids, junk_ids),
    "agent_id": st.one_of(ids, ids, st.none(), junk_ids),
    "type": st.sampled_from(["input", "processor", "conditional", "output", "other"]),
    "depends_on": st.one_of(st.lists(ids, max_size=3), st.lists(ids, max_size=3), json_like),
    "when": st.none() | conditions,
    "config": st.one_of(configs, configs, json_like),
}
nearly_nodes = st.fixed_dictionaries(
    {"id": node_values["id"]}, optional={k: v for k, v in node_values.items() if k != "id"}
)
nearly_flows = st.fixed_dictionaries(
    {
        "flow_id": st.one_of(st.sampled_from(["f", "credit_analysis"]), st.just(""), json_like),
        "nodes": st.lists(nearly_nodes, max_size=6),
    },
    optional={
        "entry_point": st.none() | ids | st.lists(ids, max_size=2),
        "exit_points": st.none() | st.lists(ids, max_size=2),
        "timeout": json_like,
        "version": st.text(max_size=5) | json_like,
        "extra": json_like,
    },
)


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    """A random valid DAG: each node depends only on earlier ones; conditions on ancestors."""
    count = draw(st.integers(1, 12))
    nodes: list[dict[str, Any]] = []
    for i in range(count):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
        node: dict[str, Any] = {"id": f"n{i}", "depends_on": [f"n{d}" for d in deps]}
        as_output: bool = draw(st.booleans())
        if deps and as_output:
            node["type"] = "output"
        else:
            node["type"] = draw(st.sampled_from(["input", "processor", "conditional"]))
            node["agent_id"] = draw(st.sampled_from(["echo", "zoe", "eddie"]))
            node["config"] = draw(configs)
        with_condition: bool = draw(st.booleans())
        if deps and with_condition:
            node["when"] = f"nodes.n{deps[0]}.score > {draw(st.integers(0, 9))} || input.go"
        nodes.append(node)
    return {"flow_id": draw(st.sampled_from(["f", "g.1", "x-y"])), "nodes": nodes}


def check(outcome: object) -> None:
    if isinstance(outcome, FlowDefinition):
        # anything accepted round-trips and has a stable version
        again = load_flow_text(to_yaml(outcome), "roundtrip")
        assert again == outcome
        assert flow_version(again) == flow_version(outcome)


def attempt_text(text: str) -> object:
    try:
        return load_flow_text(text, "fuzz.yaml")
    except FlowValidationError as exc:
        assert exc.problems and all(p.source == "fuzz.yaml" for p in exc.problems)
        return exc


def attempt_obj(obj: object) -> object:
    try:
        return validate_flow_dict(obj, "fuzz")
    except FlowValidationError as exc:
        assert exc.problems and str(exc)
        return exc


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    check(attempt_text(text))


@FUZZ
@given(json_like)
def test_arbitrary_yaml_documents(obj: Any) -> None:
    text = yaml.safe_dump(obj)
    check(attempt_text(text))


@FUZZ
@given(json_like)
def test_arbitrary_nested_data(obj: Any) -> None:
    check(attempt_obj(obj))


@FUZZ
@given(nearly_flows)
def test_nearly_valid_flows(obj: dict[str, Any]) -> None:
    outcome = attempt_obj(obj)
    check(outcome)
    check(attempt_text(yaml.safe_dump(obj)))


@FUZZ
@given(dags())
def test_valid_dags_are_accepted(obj: dict[str, Any]) -> None:
    defn = validate_flow_dict(obj, "dag")
    check(defn)
    check(load_flow_text(yaml.safe_dump(obj), "dag.yaml"))


cel_ish = st.text(
    alphabet=st.sampled_from(list("nodesinput.[]()\"'!&|<>=+-*/%?:,019 ab_{}rR\\\n")), max_size=60
)


@FUZZ
@given(st.text(max_size=60) | cel_ish, json_like, json_like)
def test_arbitrary_conditions(expr: str, input_data: Any, nodes: Any) -> None:
    try:
        condition = compile_condition(expr)
    except ConditionError:
        return
    if not isinstance(input_data, dict) or not isinstance(nodes, dict):
        input_data, nodes = {"x": input_data}, {"a": {"v": nodes}}
    try:
        assert condition.evaluate(input_data, nodes) in (True, False)
    except ConditionError:
        pass
