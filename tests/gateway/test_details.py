"""Pure parts of an execution's detail: the layered layout of a flow, its graph, and what
each node's row becomes (truthful status, agent, input, duration, pending question)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from spine_contracts import FlowDefinition
from spine_gateway.adapters.postgres import NodeRow
from spine_gateway.details import node_details, node_input, truthful_nodes
from spine_gateway.layout import Placement, layered_layout
from spine_gateway.models import ExecutionView, FlowGraph

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _grid(placed: dict[str, Placement]) -> dict[str, tuple[int, int]]:
    return {n: (p.layer, p.index) for n, p in placed.items()}


# --- layout --------------------------------------------------------------------------------


def test_a_chain_is_one_node_per_layer() -> None:
    placed = layered_layout(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("c", "d")])
    assert _grid(placed) == {"a": (0, 0), "b": (1, 0), "c": (2, 0), "d": (3, 0)}


def test_a_diamond_spreads_its_middle_over_one_layer() -> None:
    edges = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
    placed = layered_layout(["a", "b", "c", "d"], edges)
    assert _grid(placed) == {"a": (0, 0), "b": (1, 0), "c": (1, 1), "d": (2, 0)}


def test_longest_path_puts_a_node_below_its_deepest_dependency() -> None:
    # d depends on a (depth 0) and on c (depth 2): it goes to layer 3, not 1
    edges = [("a", "b"), ("b", "c"), ("a", "d"), ("c", "d")]
    placed = layered_layout(["a", "b", "c", "d"], edges)
    assert placed["d"].layer == 3
    assert all(placed[src].layer < placed[dst].layer for src, dst in edges)


def test_the_order_is_deterministic_and_follows_the_parents() -> None:
    # roots in definition order; children sorted by their parents' positions, then order
    nodes = ["r2", "r1", "c1", "c2", "c3"]
    edges = [("r1", "c1"), ("r2", "c2"), ("r1", "c3")]
    placed = layered_layout(nodes, edges)
    assert _grid(placed) == {
        "r2": (0, 0),
        "r1": (0, 1),
        "c2": (1, 0),  # under r2
        "c1": (1, 1),
        "c3": (1, 2),
    }
    assert all(_grid(layered_layout(nodes, list(reversed(edges)))) == _grid(placed) for _ in "xy")


def test_edges_to_unknown_nodes_are_ignored_and_a_cycle_does_not_hang() -> None:
    assert _grid(layered_layout(["a"], [("ghost", "a"), ("a", "a")])) == {"a": (0, 0)}
    placed = layered_layout(["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "b")])
    assert placed["a"].layer == 0 and {placed["b"].layer, placed["c"].layer} == {1, 2}
    assert layered_layout([], []) == {}


# --- the graph -----------------------------------------------------------------------------

FLOW = FlowDefinition.model_validate(
    {
        "flow_id": "f",
        "nodes": [
            {"id": "ask", "agent_id": "zoe", "type": "input", "metadata": {"label": "Intake"}},
            {"id": "score", "agent_id": "eddie", "depends_on": ["ask"]},
            {
                "id": "review",
                "agent_id": "echo",
                "depends_on": ["score"],
                "when": 'nodes.score.decision == "review"',
            },
            {"id": "result", "type": "output", "depends_on": ["score", "review"]},
        ],
    }
)


def test_the_graph_has_nodes_edges_with_conditions_and_a_layout() -> None:
    graph = FlowGraph.of("v1", FLOW)
    body = orjson.loads(graph.model_dump_json())
    assert body["flow_id"] == "f" and body["flow_version"] == "v1"
    assert (body["layers"], body["width"]) == (4, 1)
    nodes = {n["id"]: n for n in body["nodes"]}
    assert nodes["ask"] == {
        "id": "ask",
        "agent_id": "zoe",
        "type": "input",
        "label": "Intake",
        "condition": None,
        "x": 0,
        "y": 0,
    }
    assert nodes["result"]["agent_id"] is None and nodes["result"]["x"] == 3
    assert body["edges"] == [
        {"from": "ask", "to": "score", "condition": None},
        {"from": "score", "to": "review", "condition": 'nodes.score.decision == "review"'},
        {"from": "score", "to": "result", "condition": None},
        {"from": "review", "to": "result", "condition": None},
    ]


# --- node details --------------------------------------------------------------------------


def _row(node_id: str, status: str, *, at: float = 0, **over: Any) -> NodeRow:
    row = NodeRow(
        node_id=node_id,
        status=status,
        agent_id=None,
        attempt=0,
        output=None,
        error_message=None,
        started_at=T0 + timedelta(seconds=at),
        completed_at=None,
    )
    row.update(over)  # type: ignore[typeddict-item]
    return row


def test_an_ended_executions_unfinished_and_unreached_nodes_are_cancelled() -> None:
    rows = [
        _row("ask", "completed", agent_id="zoe", attempt=1, output={"x": 1}),
        _row("score", "running", agent_id="eddie", attempt=1),
    ]
    for status in ("cancelled", "failed"):
        fixed = {r["node_id"]: r for r in truthful_nodes(status, rows, FLOW)}
        assert [fixed[n]["status"] for n in ("ask", "score", "review", "result")] == [
            "completed",
            "cancelled",
            "cancelled",
            "cancelled",
        ]
        assert fixed["review"]["agent_id"] == "echo" and fixed["review"]["attempt"] == 0
    assert rows[1]["status"] == "running"  # the rows given are not changed
    live = {r["node_id"]: r["status"] for r in truthful_nodes("running", rows, FLOW)}
    assert live == {
        "ask": "completed",
        "score": "running",
        "review": "pending",
        "result": "pending",
    }


def test_a_node_that_failed_before_dispatch_names_its_flow_agent() -> None:
    rows = [_row("ask", "failed", error_message="agent 'zoe' is unknown")]
    (fixed, *_) = truthful_nodes("failed", rows, FLOW)
    assert (fixed["agent_id"], fixed["attempt"]) == ("zoe", 0)
    # no flow known: the row as it is, nothing invented
    assert truthful_nodes("failed", rows, None) == rows


def test_a_nodes_input_is_the_executions_or_its_completed_dependencies_outputs() -> None:
    rows = {
        "ask": _row("ask", "completed", output={"name": "Ana"}),
        "score": _row("score", "completed", output={"decision": "approve"}),
        "review": _row("review", "skipped"),
        "result": _row("result", "completed", output={"decision": "approve"}),
    }
    given = {"name": "Ana", "income": 1}
    assert node_input("ask", FLOW, given, rows) == given
    assert node_input("score", FLOW, given, rows) == {"ask": {"name": "Ana"}}
    assert node_input("result", FLOW, given, rows) == {"score": {"decision": "approve"}}
    assert node_input("result", None, given, rows) is None
    unreached = {**rows, "result": _row("result", "pending", started_at=None)}
    assert node_input("result", FLOW, given, unreached) is None


def test_node_details_carry_durations_and_only_a_waiting_nodes_question() -> None:
    rows = [
        _row("ask", "waiting_input", agent_id="zoe", attempt=1),
        _row("score", "completed", at=0, completed_at=T0 + timedelta(seconds=2.5)),
    ]
    asked = {
        "ask": {"question": "your income?", "missing_fields": ["income"], "turn": 1},
        "score": {"question": "stale", "missing_fields": [], "turn": 1},
    }
    details = dict(
        (r["node_id"], d) for r, d in node_details("waiting_input", {"a": 1}, rows, FLOW, asked)
    )
    assert details["ask"].pending_input == {
        "question": "your income?",
        "missing_fields": ["income"],
        "turn": 1,
        "expires_at": None,
    }
    assert details["score"].pending_input is None and details["score"].duration_ms == 2500.0
    assert details["ask"].duration_ms is None and details["ask"].input == {"a": 1}
    # cancelled: the question is no longer pending
    ended = dict((r["node_id"], d) for r, d in node_details("cancelled", {}, rows, FLOW, asked))
    assert ended["ask"].pending_input is None


def test_the_execution_view_shows_every_node_and_the_graph() -> None:
    row: Any = {
        "execution_id": "e",
        "user_id": "u",
        "flow_id": "f",
        "flow_version": "v1",
        "status": "running",
        "input_data": {"a": 1},
        "output_data": None,
        "error_message": None,
        "metadata": {},
        "last_seq": 3,
        "created_at": T0,
        "updated_at": T0,
        "completed_at": None,
    }
    nodes = node_details("running", {"a": 1}, [_row("ask", "running")], FLOW, {})
    body = orjson.loads(
        ExecutionView.detail(row, nodes, FlowGraph.of("v1", FLOW)).model_dump_json()
    )
    assert list(body["nodes"]) == ["ask", "score", "review", "result"]
    assert body["nodes"]["ask"]["input"] == {"a": 1}
    assert body["nodes"]["score"]["status"] == "pending"
    assert body["graph"]["edges"][0] == {"from": "ask", "to": "score", "condition": None}
    assert body["user_id"] == "u"  # the owner: the admin's list spans every tenant
    assert "graph" not in orjson.loads(ExecutionView.of(row).model_dump_json(exclude_none=True))
