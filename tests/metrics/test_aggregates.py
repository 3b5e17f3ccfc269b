"""The operators' aggregates, folded from events without I/O."""

from __future__ import annotations

from spine_contracts import (
    CreditsSettled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    FlowDefinition,
    FlowNode,
    NodeCompleted,
)
from spine_metrics.aggregates import Aggregates, RecentIds

FLOW = FlowDefinition(flow_id="f", nodes=(FlowNode(id="a", agent_id="echo"),))


def started(eid: str) -> ExecutionStarted:
    return ExecutionStarted.build(
        execution_id=eid, seq=1, user_id="u", flow_id="f", flow_version="v", flow=FLOW
    )


def test_success_rate_durations_latency_and_credits() -> None:
    agg = Aggregates()
    for eid in ("e1", "e2", "e3", "e4"):
        agg.apply(started(eid))
    node = agg.apply(
        NodeCompleted.build(
            execution_id="e1", seq=2, node_id="a", attempt=1, agent_id="echo", duration_ms=12.0
        )
    )
    for eid in ("e1", "e2", "e3"):
        agg.apply(ExecutionCompleted.build(execution_id=eid, seq=3, duration_ms=100.0))
    obs = agg.apply(
        ExecutionFailed.build(execution_id="e4", seq=3, error_message="x", duration_ms=50.0)
    )
    assert ("executions_finished", "f|failed", 1, "counter") in obs
    agg.apply(
        CreditsSettled.build(
            user_id="u", execution_id="e1", outcome="completed", charged=2, refunded=0, balance=8
        )
    )
    s = agg.summary()
    assert s["executions_total"] == 4 and s["executions_completed"] == 3
    assert s["success_rate"] == 0.75 and s["failure_rate"] == 0.25
    assert s["average_execution_ms"] == 87.5
    assert s["credits_spent"] == 2
    assert node == [("node_latency", "echo", 0.012, "histogram")]


def test_the_mean_duration_keeps_no_list_of_durations() -> None:
    agg = Aggregates()
    for i in range(1000):
        agg.apply(started(f"e{i}"))
        agg.apply(ExecutionCompleted.build(execution_id=f"e{i}", seq=2, duration_ms=float(i)))
    assert agg.summary()["average_execution_ms"] == 499.5
    assert not agg.flow_of  # finished executions are forgotten
    sizes = [len(v) for v in vars(agg).values() if isinstance(v, list | dict) and v is not agg.seen]
    assert max(sizes, default=0) < 10  # nothing else grows with the history


def test_a_repeat_is_folded_once_while_remembered_and_the_oldest_ids_are_forgotten() -> None:
    agg = Aggregates(seen=RecentIds(limit=3))
    first = started("e0")
    agg.apply(first)
    agg.apply(first)
    assert agg.started == 1 and agg.duplicates == 1
    for i in range(1, 4):
        agg.apply(started(f"e{i}"))
    assert len(agg.seen) == 3
    agg.apply(first)  # forgotten after three newer ids: counted again
    assert agg.started == 5 and agg.duplicates == 1
