"""Graph rules: derived entry/exit points and cycles named by their path."""

from __future__ import annotations

import pytest
from spine_flows import FlowValidationError, load_flow_text, validate_flow_dict

SRC = "flows/g.yaml"


def flow(*nodes: dict[str, object], **top: object) -> dict[str, object]:
    return {"flow_id": "g", **top, "nodes": list(nodes)}


def n(ident: str, *deps: str, **extra: object) -> dict[str, object]:
    return {"id": ident, "agent_id": "echo", "depends_on": list(deps), **extra}


def test_entry_and_exit_derived_for_a_chain() -> None:
    defn = validate_flow_dict(flow(n("a"), n("b", "a"), n("c", "b")), SRC)
    assert defn.entry_point == ("a",)
    assert defn.exit_points == ("c",)


def test_entry_and_exit_derived_for_several_roots_and_sinks_in_node_order() -> None:
    defn = validate_flow_dict(
        flow(n("y"), n("x"), n("m", "x", "y"), n("s2", "m"), n("s1", "m")), SRC
    )
    assert defn.entry_point == ("y", "x")
    assert defn.exit_points == ("s2", "s1")


def test_explicit_ends_are_kept_and_normalised() -> None:
    defn = validate_flow_dict(
        flow(n("a"), n("b", "a"), n("c", "b"), entry_point="a", exit_points=["c", "b"]), SRC
    )
    assert defn.entry_point == ("a",)  # a single id becomes a tuple
    assert defn.exit_points == ("b", "c")  # in node order; a middle node may be an exit


def test_single_node_flow_is_its_own_entry_and_exit() -> None:
    defn = validate_flow_dict(flow(n("only")), SRC)
    assert defn.entry_point == ("only",) and defn.exit_points == ("only",)


def problems(data: dict[str, object]) -> list[str]:
    with pytest.raises(FlowValidationError) as info:
        validate_flow_dict(data, SRC)
    return [str(p) for p in info.value.problems]


def test_two_node_cycle_is_named() -> None:
    assert problems(flow(n("a", "b"), n("b", "a"))) == [
        "flows/g.yaml: node 'a': depends_on: dependency cycle a -> b -> a "
        "(each depends on the next)"
    ]


def test_longer_cycle_behind_a_valid_start_is_named_from_its_first_node() -> None:
    found = problems(flow(n("start"), n("c", "b"), n("a", "start", "c"), n("b", "a")))
    assert found == [
        "flows/g.yaml: node 'c': depends_on: dependency cycle c -> b -> a -> c "
        "(each depends on the next)"
    ]


def test_every_separate_cycle_is_reported_once() -> None:
    found = problems(flow(n("a", "b"), n("b", "a"), n("x", "y"), n("y", "z"), n("z", "x")))
    assert len(found) == 2
    assert "dependency cycle a -> b -> a" in found[0]
    assert "dependency cycle x -> y -> z -> x" in found[1]


def test_cycle_in_yaml_names_the_file() -> None:
    with pytest.raises(FlowValidationError) as info:
        load_flow_text(
            "flow_id: c\nnodes:\n"
            "  - {id: zoe, agent_id: zoe, depends_on: [eddie]}\n"
            "  - {id: eddie, agent_id: eddie, depends_on: [zoe]}\n",
            "flows/loop.yaml",
        )
    assert str(info.value).startswith(
        "flows/loop.yaml: node 'zoe': depends_on: dependency cycle zoe -> eddie -> zoe"
    )


def test_diamond_is_not_a_cycle() -> None:
    defn = validate_flow_dict(flow(n("a"), n("b", "a"), n("c", "a"), n("d", "b", "c")), SRC)
    assert defn.entry_point == ("a",) and defn.exit_points == ("d",)


def test_long_chain_has_no_recursion_limit() -> None:
    nodes = [n("n0")] + [n(f"n{i}", f"n{i - 1}") for i in range(1, 500)]
    nodes[0]["depends_on"] = ["n499"]  # one big cycle through every node
    found = problems(flow(*nodes))
    assert len(found) == 1 and "dependency cycle n0 -> n499 -> n498" in found[0]
