"""Every validation rule: the flow is rejected with a message naming file, node and field."""

from __future__ import annotations

import pytest
from spine_flows import (
    MAX_FILE_BYTES,
    MAX_NODES,
    FlowError,
    FlowValidationError,
    Problem,
    load_flow_file,
    load_flow_text,
    validate_flow,
    validate_flow_dict,
)

SRC = "flows/x.yaml"


def reject(text: str) -> FlowValidationError:
    with pytest.raises(FlowValidationError) as info:
        load_flow_text(text, SRC)
    return info.value


def only(err: FlowValidationError) -> Problem:
    assert len(err.problems) == 1, str(err)
    return err.problems[0]


def test_error_tree() -> None:
    assert issubclass(FlowValidationError, FlowError)
    assert issubclass(FlowError, ValueError)


def test_problem_str_names_file_node_and_field() -> None:
    problem = Problem(SRC, "eddie", "depends_on", "unknown node 'zoe2'")
    assert str(problem) == "flows/x.yaml: node 'eddie': depends_on: unknown node 'zoe2'"
    assert str(Problem(SRC, None, "flow_id", "missing")) == "flows/x.yaml: flow_id: missing"
    assert str(Problem(SRC, None, "id", "bad", 2)) == "flows/x.yaml: node #3: id: bad"
    assert str(Problem(SRC, None, None, "bad")) == "flows/x.yaml: bad"


def test_unknown_depends_on_reads_like_the_spec() -> None:
    err = reject(
        "flow_id: x\n"
        "nodes:\n"
        "  - {id: zoe, agent_id: zoe}\n"
        "  - {id: eddie, agent_id: eddie, depends_on: [zoe2]}\n"
    )
    p = only(err)
    assert (p.source, p.node_id, p.field) == (SRC, "eddie", "depends_on")
    assert str(err).startswith("flows/x.yaml: node 'eddie': depends_on: unknown node 'zoe2'")
    assert "did you mean 'zoe'" in str(err)


# --------------------------------------------------------------------------- YAML / shape


def test_yaml_syntax_error_has_line_and_column() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - id: a\n   agent_id: b\n"))
    assert p.source == SRC
    assert "YAML syntax error at line 4, column 4" in p.message


def test_yaml_duplicate_key_is_rejected_with_its_line() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - id: a\n    agent_id: a\n    agent_id: b\n"))
    assert "line 5" in p.message and "duplicate key 'agent_id'" in p.message


def test_yaml_several_documents_rejected() -> None:
    assert "YAML syntax error" in only(reject("flow_id: a\n---\nflow_id: b\n")).message


def test_yaml_invalid_date_is_a_validation_error() -> None:
    assert "YAML could not be read" in only(reject("flow_id: x\nwhen: 2024-13-45\n")).message


@pytest.mark.parametrize(
    ("text", "shown"),
    [("- a\n- b\n", "a list"), ("just words\n", "'just words'"), ("42\n", "42")],
)
def test_top_level_must_be_a_mapping(text: str, shown: str) -> None:
    p = only(reject(text))
    assert p.message == f"the top level must be a mapping (flow_id, nodes, ...), not {shown}"


def test_empty_file() -> None:
    assert "empty file" in only(reject("# nothing here\n")).message


def test_unknown_flow_key_with_suggestion() -> None:
    err = reject("flow_id: x\ndescripton: typo\nnodes:\n  - {id: a, agent_id: a}\n")
    p = only(err)
    assert (p.node_id, p.field) == (None, "descripton")
    assert str(p) == "flows/x.yaml: descripton: unknown key (did you mean 'description'?)"


def test_unknown_node_key_with_suggestion() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: a, agent_id: a, depend_on: [b]}\n"))
    assert str(p) == "flows/x.yaml: node 'a': depend_on: unknown key (did you mean 'depends_on'?)"


def test_node_config_allows_extra_keys_for_the_agent() -> None:
    defn = load_flow_text(
        "flow_id: x\nnodes:\n  - id: a\n    agent_id: a\n    config: {risk_threshold: 0.7, "
        "style: {tone: formal}}\n",
        SRC,
    )
    extra = defn.nodes[0].config.model_extra or {}
    assert extra == {"risk_threshold": 0.7, "style": {"tone": "formal"}}


def test_non_string_keys_are_named() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - id: a\n    agent_id: a\n    config: {1: one}\n"))
    assert (p.node_id, p.field) == ("a", "config")
    assert "key 1 is not a string" in p.message


def test_missing_nodes() -> None:
    p = only(reject("flow_id: x\n"))
    assert str(p) == "flows/x.yaml: nodes: missing: a flow needs a list of nodes"


def test_flow_without_nodes() -> None:
    p = only(reject("flow_id: x\nnodes: []\n"))
    assert str(p) == "flows/x.yaml: nodes: a flow needs at least one node"


def test_nodes_must_be_a_list_of_mappings() -> None:
    assert only(reject("flow_id: x\nnodes: {a: 1}\n")).message == (
        "must be a list of nodes, not a mapping"
    )
    err = reject("flow_id: x\nnodes: [zoe, {id: b, agent_id: b}]\n")
    p = only(err)
    assert str(p).startswith("flows/x.yaml: node #1: a node must be a mapping")


def test_too_many_nodes() -> None:
    nodes = [{"id": f"n{i}", "agent_id": "echo"} for i in range(MAX_NODES + 1)]
    with pytest.raises(FlowValidationError) as info:
        validate_flow_dict({"flow_id": "big", "nodes": nodes}, SRC)
    p = only(info.value)
    assert p.field == "nodes" and f"the limit is {MAX_NODES}" in p.message


def test_max_nodes_is_accepted() -> None:
    nodes = [{"id": "n0", "agent_id": "echo"}] + [
        {"id": f"n{i}", "agent_id": "echo", "depends_on": [f"n{i - 1}"]}
        for i in range(1, MAX_NODES)
    ]
    defn = validate_flow_dict({"flow_id": "long", "nodes": nodes}, SRC)
    assert defn.entry_point == ("n0",) and defn.exit_points == (f"n{MAX_NODES - 1}",)


def test_too_large_text() -> None:
    text = "flow_id: x\n# " + "x" * MAX_FILE_BYTES + "\n"
    p = only(reject(text))
    assert f"the limit is {MAX_FILE_BYTES}" in p.message


def test_alias_bomb_is_bounded() -> None:
    levels = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcdef", "bcdefg", strict=True):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    p = only(reject("\n".join(levels) + "\n"))
    assert "more than" in p.message and "values" in p.message


def test_self_referencing_alias_is_bounded() -> None:
    assert "nested deeper than" in only(reject("flow_id: &a [*a]\nnodes: []\n")).message


def test_deep_nesting_is_bounded() -> None:
    assert "YAML" in only(reject("[" * 5000 + "]" * 5000)).message


# ----------------------------------------------------------------------------- types


def test_missing_flow_id() -> None:
    p = only(reject("nodes:\n  - {id: a, agent_id: a}\n"))
    assert str(p) == "flows/x.yaml: flow_id: missing (required)"


def test_empty_flow_id() -> None:
    p = only(reject("flow_id: ''\nnodes:\n  - {id: a, agent_id: a}\n"))
    assert str(p) == "flows/x.yaml: flow_id: must not be empty"


@pytest.mark.parametrize("flow_id", ["a b", "x/y", "ñ", "a" * 129, "new\\nline"])
def test_flow_id_pattern(flow_id: str) -> None:
    with pytest.raises(FlowValidationError) as info:
        validate_flow_dict({"flow_id": flow_id, "nodes": [{"id": "a", "agent_id": "a"}]}, SRC)
    p = only(info.value)
    assert p.field == "flow_id"


@pytest.mark.parametrize("flow_id", ["a", "credit_analysis", "v1.2-beta", "A" * 128, "0"])
def test_flow_id_pattern_accepts(flow_id: str) -> None:
    defn = validate_flow_dict({"flow_id": flow_id, "nodes": [{"id": "a", "agent_id": "a"}]}, SRC)
    assert defn.flow_id == flow_id


def test_bad_types_name_node_and_field() -> None:
    err = reject(
        "flow_id: x\n"
        "nodes:\n"
        "  - id: eddie\n"
        "    agent_id: eddie\n"
        "    config: {timeout: -1, retries: many}\n"
        "  - id: 5\n"
        "    type: magic\n"
        "    depends_on: eddie\n"
    )
    lines = str(err).splitlines()
    assert "flows/x.yaml: node 'eddie': config.timeout: must be greater than 0 (got -1)" in lines
    assert any(
        line.startswith("flows/x.yaml: node 'eddie': config.retries: must be a valid integer")
        for line in lines
    )
    assert "flows/x.yaml: node #2: id: must be a valid string (got 5)" in lines
    assert any(line.startswith("flows/x.yaml: node #2: type: must be 'input'") for line in lines)
    assert "flows/x.yaml: node #2: depends_on: must be a list (got 'eddie')" in lines


def test_unquoted_version_gets_a_hint() -> None:
    p = only(reject("flow_id: x\nversion: 1.0\nnodes:\n  - {id: a, agent_id: a}\n"))
    assert p.field == "version" and "quote it" in p.message


def test_yaml_boolean_id_gets_a_hint() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: yes, agent_id: a}\n"))
    assert p.node_index == 0 and p.field == "id" and "quote it" in p.message


def test_bad_flow_level_types() -> None:
    err = reject("flow_id: x\ntimeout: 0\ncost: -1\nnodes:\n  - {id: a, agent_id: a}\n")
    fields = {p.field for p in err.problems}
    assert fields == {"timeout", "cost"}


def test_infinite_timeout_rejected() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: a, agent_id: a, config: {timeout: .inf}}\n"))
    assert (p.node_id, p.field) == ("a", "config.timeout")


def test_entry_point_of_the_wrong_type() -> None:
    p = only(reject("flow_id: x\nentry_point: {a: 1}\nnodes:\n  - {id: a, agent_id: a}\n"))
    assert str(p) == (
        "flows/x.yaml: entry_point: must be a node id or a list of node ids, not a mapping"
    )


# --------------------------------------------------------------------------- meaning


def test_duplicate_node_ids() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: a, agent_id: a}\n  - {id: a, agent_id: b}\n"))
    assert (p.node_id, p.field, p.node_index) == ("a", "id", 1)
    assert "duplicate node id (first used by node #1)" in p.message


def test_invalid_node_id() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: 'my node', agent_id: a}\n"))
    assert (p.node_id, p.field) == ("my node", "id")
    assert "not a valid node id" in p.message


def test_self_dependency() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: a, agent_id: a, depends_on: [a]}\n"))
    assert str(p) == "flows/x.yaml: node 'a': depends_on: a node cannot depend on itself"


def test_dependency_listed_twice() -> None:
    p = only(
        reject(
            "flow_id: x\nnodes:\n  - {id: a, agent_id: a}\n"
            "  - {id: b, agent_id: a, depends_on: [a, a]}\n"
        )
    )
    assert str(p) == "flows/x.yaml: node 'b': depends_on: 'a' is listed twice"


@pytest.mark.parametrize("node_type", ["input", "processor", "conditional"])
def test_agent_nodes_need_an_agent_id(node_type: str) -> None:
    p = only(reject(f"flow_id: x\nnodes:\n  - {{id: a, type: {node_type}}}\n"))
    assert (p.node_id, p.field) == ("a", "agent_id")
    assert f"{node_type} node runs an agent, so it needs an agent_id" in p.message


def test_default_node_type_is_processor_and_needs_an_agent() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: a}\n"))
    assert (p.node_id, p.field) == ("a", "agent_id")


def test_output_node_with_agent_id_is_rejected() -> None:
    p = only(
        reject(
            "flow_id: x\nnodes:\n  - {id: a, agent_id: a}\n"
            "  - {id: r, type: output, agent_id: echo, depends_on: [a]}\n"
        )
    )
    assert (p.node_id, p.field) == ("r", "agent_id")
    assert "output node runs no agent" in p.message


def test_output_node_needs_dependencies() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: r, type: output}\n"))
    assert (p.node_id, p.field) == ("r", "depends_on")


def test_invalid_agent_id() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: a, agent_id: 'zoe/../x'}\n"))
    assert (p.node_id, p.field) == ("a", "agent_id")


def test_invalid_when_syntax_names_node_and_field() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: a, agent_id: a, when: 'input.amount >'}\n"))
    assert (p.source, p.node_id, p.field) == (SRC, "a", "when")
    assert str(p).startswith("flows/x.yaml: node 'a': when: invalid condition (line 1, column 15)")


def test_when_with_unknown_variable() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: a, agent_id: a, when: 'amount > 10'}\n"))
    assert str(p).startswith("flows/x.yaml: node 'a': when: unknown variable 'amount'")


def test_when_must_be_a_string() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: a, agent_id: a, when: [1]}\n"))
    assert (p.node_id, p.field) == ("a", "when")


def test_when_referring_to_an_unknown_node() -> None:
    p = only(
        reject(
            "flow_id: x\nnodes:\n  - {id: eddie, agent_id: e}\n"
            "  - {id: r, agent_id: e, depends_on: [eddie], when: 'nodes.edie.ok'}\n"
        )
    )
    assert str(p) == (
        "flows/x.yaml: node 'r': when: refers to unknown node 'edie' (did you mean 'eddie'?)"
    )


def test_when_referring_to_a_node_that_is_not_upstream() -> None:
    p = only(
        reject(
            "flow_id: x\nnodes:\n  - {id: a, agent_id: e}\n  - {id: b, agent_id: e}\n"
            "  - {id: c, agent_id: e, depends_on: [a], when: 'nodes.b.ok == true'}\n"
        )
    )
    assert (p.node_id, p.field) == ("c", "when")
    assert "'b', which is not upstream" in p.message


def test_when_may_read_indirect_ancestors_and_quoted_ids() -> None:
    defn = load_flow_text(
        "flow_id: x\nnodes:\n  - {id: my-a, agent_id: e}\n"
        "  - {id: b, agent_id: e, depends_on: [my-a]}\n"
        "  - {id: c, agent_id: e, depends_on: [b], when: 'nodes[\"my-a\"].ok && nodes.b.ok'}\n",
        SRC,
    )
    assert defn.nodes[2].when is not None


def test_when_reading_its_own_output() -> None:
    p = only(reject("flow_id: x\nnodes:\n  - {id: a, agent_id: e, when: 'nodes.a.ok'}\n"))
    assert (p.node_id, p.field) == ("a", "when")


def test_entry_and_exit_points_naming_unknown_nodes() -> None:
    err = reject(
        "flow_id: x\nentry_point: zoe2\nexit_points: [a, nope]\nnodes:\n  - {id: a, agent_id: a}\n"
    )
    lines = str(err).splitlines()
    assert "flows/x.yaml: entry_point: unknown node 'zoe2'" in lines
    assert "flows/x.yaml: exit_points: unknown node 'nope'" in lines


def test_entry_point_that_has_dependencies() -> None:
    err = reject(
        "flow_id: x\nentry_point: [a, b]\n"
        "nodes:\n  - {id: a, agent_id: a}\n  - {id: b, agent_id: a, depends_on: [a]}\n"
    )
    assert str(err) == (
        "flows/x.yaml: entry_point: node 'b' depends on 'a', so it cannot be an entry point"
    )


def test_entry_point_missing_a_root() -> None:
    err = reject(
        "flow_id: x\nentry_point: a\nnodes:\n  - {id: a, agent_id: a}\n  - {id: b, agent_id: a}\n"
    )
    assert "node 'b' has no dependencies, so it starts too" in str(err)


def test_empty_exit_points() -> None:
    p = only(reject("flow_id: x\nexit_points: []\nnodes:\n  - {id: a, agent_id: a}\n"))
    assert p.field == "exit_points" and "at least one node" in p.message


def test_many_problems_are_reported_together() -> None:
    err = reject(
        "flow_id: x\n"
        "nodes:\n"
        "  - {id: a, type: input}\n"
        "  - {id: b, agent_id: b, depends_on: [zz]}\n"
        "  - {id: r, type: output, agent_id: r, depends_on: [b]}\n"
    )
    assert [(p.node_id, p.field) for p in err.problems] == [
        ("a", "agent_id"),
        ("b", "depends_on"),
        ("r", "agent_id"),
    ]


# ----------------------------------------------------------------------------- files


def test_unreadable_file_is_a_validation_error() -> None:
    with pytest.raises(FlowValidationError) as info:
        load_flow_file("flows/does-not-exist.yaml")
    p = only(info.value)
    assert p.source == "flows/does-not-exist.yaml" and "cannot read" in p.message


def test_non_string_text_is_a_validation_error() -> None:
    with pytest.raises(FlowValidationError):
        load_flow_text(b"flow_id: x", SRC)  # type: ignore[arg-type]


# ----------------------------------------------------------- values JSON cannot carry


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("2024-01-01", "a date value is not allowed here; write it as a quoted string"),
        ("99999999999999999999", "does not fit in 64 bits"),
        (".nan", "nan is not a finite number"),
        ("{1: one}", "key 1 is not a string"),
        ("!!binary aGVsbG8=", "a bytes value is not allowed"),
    ],
)
def test_values_that_would_change_on_the_bus_are_rejected(value: str, fragment: str) -> None:
    # the definition travels as JSON: whatever JSON cannot carry unchanged would give the
    # gateway and the orchestrator different versions of the same flow
    p = only(
        reject(
            f"flow_id: x\nnodes:\n  - id: a\n    agent_id: a\n"
            f"    config:\n      extra: {{deep: {value}}}\n"
        )
    )
    assert (p.node_id, p.field) == ("a", "config.extra.deep")
    assert fragment in p.message


def test_yaml_anchors_and_merge_keys_work() -> None:
    defn = load_flow_text(
        "flow_id: x\n"
        "nodes:\n"
        "  - {id: a, agent_id: echo, config: &common {timeout: 5, retries: 1}}\n"
        "  - id: b\n"
        "    agent_id: echo\n"
        "    depends_on: [a]\n"
        "    config: {<<: *common, retries: 3}\n",
        SRC,
    )
    assert defn.nodes[1].config.timeout == 5 and defn.nodes[1].config.retries == 3


def test_validate_flow_rechecks_a_typed_definition() -> None:
    from spine_contracts import FlowDefinition, FlowNode

    looped = FlowDefinition(
        flow_id="x",
        nodes=(
            FlowNode(id="a", agent_id="e", depends_on=("b",)),
            FlowNode(id="b", agent_id="e", depends_on=("a",)),
        ),
    )
    with pytest.raises(FlowValidationError) as info:
        validate_flow(looped, "api:PUT /flows/x")
    assert str(info.value).startswith("api:PUT /flows/x: node 'a': depends_on: dependency cycle")
    ok = load_flow_text("flow_id: x\nnodes:\n  - {id: a, agent_id: e}\n", SRC)
    assert validate_flow(ok, "api") == ok
