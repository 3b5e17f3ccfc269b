"""The gateway's flow problems read back into node, field and message, and the submitted
flow drawn leniently so the form can mark the offending nodes (spine_console.problems)."""

from __future__ import annotations

import pytest
from spine_console import problems
from spine_flows import FlowValidationError, load_flow_text


def _problems_of(text: str) -> list[str]:
    """What the gateway puts in ``problems``: ``str()`` of each flow-library problem."""
    with pytest.raises(FlowValidationError) as caught:
        load_flow_text(text, "api")
    return [str(p) for p in caught.value.problems]


def test_node_field_message() -> None:
    p = problems.parse("api: node 'b': depends_on: unknown node 'zz'")
    assert (p.source, p.node_id, p.field, p.message) == (
        "api",
        "b",
        "depends_on",
        "unknown node 'zz'",
    )
    assert p.key == "b"


def test_dotted_field_and_message_with_colons() -> None:
    p = problems.parse("api: node 'a': agent_id: missing: an input node runs an agent, x")
    assert (p.node_id, p.field) == ("a", "agent_id")
    assert p.message == "missing: an input node runs an agent, x"


def test_node_by_position_without_field() -> None:
    p = problems.parse("api: node #2: a node must be a mapping (id, agent_id, ...), not 'x'")
    assert (p.node_id, p.node_number, p.field, p.key) == (None, 2, None, "#2")
    assert p.message.startswith("a node must be a mapping")


def test_flow_field_without_node() -> None:
    p = problems.parse("api: nodes: missing: a flow needs a list of nodes")
    assert (p.key, p.field, p.message) == (None, "nodes", "missing: a flow needs a list of nodes")


def test_yaml_syntax_error_has_line_and_column() -> None:
    p = problems.parse(
        "api: YAML syntax error at line 4, column 4: did not find expected '-' indicator"
    )
    assert (p.key, p.field, p.line, p.column) == (None, None, 4, 4)
    assert p.message.startswith("YAML syntax error")


def test_hostile_node_id_is_unquoted_not_evaluated() -> None:
    # repr() picks double quotes for an id with a single quote; the id holds ': ' too
    p = problems.parse("""api: node "it's: <script>": id: bad""")
    assert (p.node_id, p.field, p.message) == ("it's: <script>", "id", "bad")


def test_unsourced_message_of_another_422() -> None:
    found = problems.from_error(
        {"code": "AGENT_NOT_USABLE"}, "node 'a': agent 'x' belongs to another user"
    )
    assert [(p.node_id, p.field, p.message) for p in found] == [
        ("a", None, "agent 'x' belongs to another user")
    ]


def test_real_problems_round_trip() -> None:
    """Every problem the flow library writes for these flows comes back at its node and
    field (the strings are the library's own, not copies)."""
    wrong_type = (
        "flow_id: f\nnodes:\n  - id: a\n    agent_id: echo\n    config:\n      timeout: soon\n"
    )
    missing_dep = (
        "flow_id: f\nnodes:\n  - id: a\n    agent_id: echo\n"
        "  - id: b\n    agent_id: echo\n    depends_on: [a, zz]\n"
    )
    [typed] = [problems.parse(t) for t in _problems_of(wrong_type)]
    assert (typed.node_id, typed.field) == ("a", "config.timeout")
    assert "soon" in typed.message
    [dep] = [problems.parse(t) for t in _problems_of(missing_dep)]
    assert (dep.node_id, dep.field, dep.message) == ("b", "depends_on", "unknown node 'zz'")
    [syntax] = [problems.parse(t) for t in _problems_of("flow_id: f\nnodes:\n  - id: a\n   x: 1\n")]
    assert (syntax.line, syntax.column, syntax.key) == (4, 4, None)


def test_by_node_groups_fields_in_order() -> None:
    found = [
        problems.parse("api: node 'a': depends_on: unknown node 'q'"),
        problems.parse("api: flow_id: must not be empty"),
        problems.parse("api: node 'a': when: refers to unknown node 'q'"),
        problems.parse("api: node 'a': depends_on: 'a' is listed twice"),
        problems.parse("api: node #3: a node must be a mapping"),
    ]
    nodes, flow = problems.by_node(found)
    assert [n.key for n in nodes] == ["a", "#3"]
    assert nodes[0].fields == {
        "depends_on": ["unknown node 'q'", "'a' is listed twice"],
        "when": ["refers to unknown node 'q'"],
    }
    assert nodes[0].count == 3
    assert nodes[1].fields == {"": ["a node must be a mapping"]}
    assert [p.field for p in flow] == ["flow_id"]


def test_submitted_graph_layers_and_keys() -> None:
    text = (
        "flow_id: f\nnodes:\n  - id: a\n    agent_id: echo\n"
        "  - id: b\n    depends_on: [a, missing]\n  - id: c\n    depends_on: a\n"
        "  - 7\n  - id: d\n    depends_on: [b, c]\n  - id: a\n"
    )
    drawn = problems.submitted_graph(text)
    assert drawn is not None
    where = {n["id"]: (n["x"], n["y"]) for n in drawn["nodes"]}
    # keys as problems name nodes: by id, by position when it has none (or a duplicate)
    assert list(where) == ["a", "b", "c", "#4", "d", "#6"]
    assert where["a"] == (0, 0) and where["#4"] == (0, 1) and where["#6"] == (0, 2)
    assert where["b"] == (1, 0) and where["c"] == (1, 1) and where["d"] == (2, 0)
    assert {(e["from"], e["to"]) for e in drawn["edges"]} == {
        ("a", "b"),
        ("a", "c"),
        ("b", "d"),
        ("c", "d"),
    }
    assert (drawn["layers"], drawn["width"]) == (3, 3)


def test_submitted_graph_survives_cycles_and_bad_text() -> None:
    cyclic = "flow_id: f\nnodes:\n  - {id: a, depends_on: [b]}\n  - {id: b, depends_on: [a]}\n"
    drawn = problems.submitted_graph(cyclic)
    assert drawn is not None and drawn["layers"] <= 2
    for bad in ("", "nodes: [", "- 1\n- 2\n", "nodes: 3", '{"nodes": []}', "a: *nope"):
        assert problems.submitted_graph(bad) is None
    as_json = '{"definition": {"flow_id": "j", "nodes": [{"id": "x"}]}}'
    assert problems.submitted_id(as_json) == "j"
    graph = problems.submitted_graph(as_json)
    assert graph is not None and [n["id"] for n in graph["nodes"]] == ["x"]


def test_layers_of_a_long_cycle_stay_bounded() -> None:
    keys = [f"n{i}" for i in range(50)]
    deps = {k: [keys[(i + 1) % 50]] for i, k in enumerate(keys)}
    assert max(problems.layers_of(keys, deps).values()) <= 49


def test_excerpt_around_the_line() -> None:
    text = "l1\nl2\nl3\nl4\nl5\nl6\n"
    ex = problems.excerpt(text, 4, 3)
    assert ex is not None
    assert (ex.first, ex.lines, ex.line, ex.column) == (2, ["l2", "l3", "l4", "l5", "l6"], 4, 3)
    assert problems.excerpt(text, None, None) is None
    assert problems.excerpt(text, 99, 1) is None
