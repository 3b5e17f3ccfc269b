"""The flows in ``flows/`` load, mean what they should, and survive a YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from spine_contracts import FlowDefinition, FlowNode, NodeConfig
from spine_flows import compile_condition, flow_version, load_flow_file, load_flow_text, to_yaml

FLOWS = Path(__file__).resolve().parents[2] / "flows"
SHIPPED = sorted(FLOWS.glob("*.yaml"))


def test_the_expected_flows_ship() -> None:
    assert {p.stem for p in SHIPPED} >= {
        "credit_analysis",
        "parallel_research",
        "conditional_review",
        "echo_chain",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_flow_loads_and_round_trips(path: Path) -> None:
    defn = load_flow_file(path)
    assert defn.flow_id == path.stem
    again = load_flow_text(to_yaml(defn), f"roundtrip:{path.name}")
    assert again == defn
    assert flow_version(again) == flow_version(defn)


def test_credit_analysis_is_the_original_flow() -> None:
    expected = FlowDefinition(
        flow_id="credit_analysis",
        name="Credit analysis",
        description="Zoe gathers the applicant's data, Eddie scores the risk, result returns it",
        version="1.0.0",
        nodes=(
            FlowNode(
                id="zoe",
                agent_id="zoe",
                type="input",
                config=NodeConfig(
                    max_turns=5, required_fields=("name", "income", "amount", "term_months")
                ),
            ),
            FlowNode(
                id="eddie",
                agent_id="eddie",
                type="processor",
                depends_on=("zoe",),
                config=NodeConfig(timeout=30, retries=2, risk_threshold=0.7),  # type: ignore[call-arg]
            ),
            FlowNode(id="result", type="output", depends_on=("eddie",)),
        ),
    )
    defn = load_flow_file(FLOWS / "credit_analysis.yaml")
    assert flow_version(defn) == flow_version(expected)
    assert defn.entry_point == ("zoe",) and defn.exit_points == ("result",)
    assert (defn.nodes[1].config.model_extra or {})["risk_threshold"] == 0.7


def test_parallel_research_is_a_diamond_of_echo_agents() -> None:
    defn = load_flow_file(FLOWS / "parallel_research.yaml")
    by_id = {n.id: n for n in defn.nodes}
    assert defn.entry_point == ("plan",) and defn.exit_points == ("result",)
    branches = [n for n in defn.nodes if n.depends_on == ("plan",)]
    assert len(branches) >= 2
    fan_in = [n for n in defn.nodes if len(n.depends_on) >= 2]
    assert len(fan_in) == 1 and set(fan_in[0].depends_on) == {b.id for b in branches}
    assert {n.agent_id for n in defn.nodes if n.type != "output"} == {"echo"}
    assert by_id["result"].type == "output"


def test_conditional_review_runs_review_only_when_eddie_says_so() -> None:
    defn = load_flow_file(FLOWS / "conditional_review.yaml")
    review = next(n for n in defn.nodes if n.when)
    assert review.agent_id == "echo" and "eddie" in review.depends_on
    condition = compile_condition(review.when or "")
    assert condition.evaluate({}, {"eddie": {"decision": "review", "score": 0.5}}) is True
    assert condition.evaluate({}, {"eddie": {"decision": "approve", "score": 0.9}}) is False
    assert defn.nodes[-1].type == "output"


def test_echo_chain_is_three_echoes_then_output() -> None:
    defn = load_flow_file(FLOWS / "echo_chain.yaml")
    assert [(n.id, n.agent_id, n.depends_on) for n in defn.nodes] == [
        ("a", "echo", ()),
        ("b", "echo", ("a",)),
        ("c", "echo", ("b",)),
        ("result", None, ("c",)),
    ]
