"""The execution state machine, without I/O."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from spine_contracts import (
    AgentCancel,
    AgentMessage,
    AgentResult,
    CancelExecution,
    ExecutionCommandRejected,
    ExecutionCompleted,
    ExecutionFailed,
    FireTimer,
    FlowDefinition,
    FlowNode,
    NodeConfig,
    NodeDispatched,
    NodeSkipped,
    NodeWaitingInput,
    ProvideInput,
    SettleCredits,
    StartExecution,
)
from spine_orchestrator.domain import (
    Decision,
    Environment,
    ExecutionState,
    FinishedExecution,
    decide,
    state_from_dict,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def simple_condition(expr: str, inp: Mapping[str, Any], nodes: Mapping[str, Any]) -> bool:
    # test double for the CEL evaluator: "<node>.<field> == <literal>"
    left, _, right = expr.partition(" == ")
    node, _, fld = left.partition(".")
    return str(nodes.get(node, {}).get(fld)) == right.strip("'\"")


def env(
    now: datetime = T0,
    agents: dict[str, str] | None = None,
    owners: dict[str, str | None] | None = None,
) -> Environment:
    agents = agents or {}
    owners = owners or {}
    return Environment(
        now=now,
        agent_availability=lambda a: agents.get(a, "active"),  # type: ignore[arg-type,return-value]
        evaluate_condition=simple_condition,
        agent_owner=lambda a: owners.get(a, "system"),
    )


def start(flow: FlowDefinition, credits: int = 1, **inp: Any) -> StartExecution:
    return StartExecution.build(
        execution_id="e1",
        user_id="u1",
        flow=flow,
        flow_version=flow.content_hash(),
        input_data=inp,
        credits_reserved=credits,
    )


def result(task: AgentMessage, status: str = "success", **kw: Any) -> AgentResult:
    d = task.data
    return AgentResult.build(
        execution_id=d.execution_id,
        node_id=d.node_id,
        attempt=d.attempt,
        agent_id=d.to_agent,
        status=status,
        **kw,
    )


def tasks(decision: Decision) -> list[AgentMessage]:
    return [t.message for t in decision.tasks if isinstance(t.message, AgentMessage)]


def flow(*nodes: FlowNode, **kw: Any) -> FlowDefinition:
    return FlowDefinition(flow_id="f", nodes=nodes, **kw)


def agent(node_id: str, *deps: str, **config: Any) -> FlowNode:
    return FlowNode(id=node_id, agent_id="echo", depends_on=deps, config=NodeConfig(**config))


def test_diamond_dispatches_both_branches_together_and_completes() -> None:
    f = flow(
        agent("a"),
        agent("b", "a"),
        agent("c", "a"),
        agent("d", "b", "c"),
        FlowNode(id="out", type="output", depends_on=("d",)),
    )
    d = decide(None, start(f), env())
    assert [t.data.node_id for t in tasks(d)] == ["a"]
    d = decide(d.state, result(tasks(d)[0], output={"v": 1}), env())
    assert sorted(t.data.node_id for t in tasks(d)) == ["b", "c"]
    b, c = tasks(d)
    d2 = decide(d.state, result(b, output={"b": 1}), env())
    assert tasks(d2) == []
    d3 = decide(d2.state, result(c, output={"c": 2}), env())
    (dt,) = tasks(d3)
    assert dt.data.payload["dependencies"] == {"b": {"b": 1}, "c": {"c": 2}}
    d4 = decide(d3.state, result(dt, output={"final": True}), env())
    done = [e for e in d4.events if isinstance(e, ExecutionCompleted)]
    assert done and done[0].data.output_data == {"out": {"final": True}}
    assert d4.state is not None and d4.state.status == "completed"
    (settle,) = d4.commands
    assert isinstance(settle, SettleCredits) and settle.data.charge == 1


def test_duplicate_and_late_results_change_nothing() -> None:
    f = flow(agent("a"), agent("b", "a"))
    d = decide(None, start(f), env())
    r = result(tasks(d)[0], output={"x": 1})
    d1 = decide(d.state, r, env())
    again = decide(d1.state, r, env())
    assert not again.changed
    stale = AgentResult.build(
        execution_id="e1", node_id="a", attempt=7, agent_id="echo", status="success"
    )
    assert not decide(d1.state, stale, env()).changed
    assert not decide(d.state, start(f), env()).changed  # duplicate start


def test_retry_then_success_uses_a_new_attempt() -> None:
    f = flow(agent("a", retries=2, retry_backoff=0.5))
    d = decide(None, start(f), env())
    d = decide(d.state, result(tasks(d)[0], status="error", error_message="boom"), env())
    assert d.state is not None and d.state.status == "running"
    (timer,) = d.state.timers.values()
    assert timer.kind == "retry" and timer.due_at == T0 + timedelta(seconds=0.5)
    fire = FireTimer.build(
        execution_id="e1", timer_id=timer.timer_id, kind="retry", node_id="a", due_at=timer.due_at
    )
    d = decide(d.state, fire, env(timer.due_at))
    (t2,) = tasks(d)
    assert t2.data.attempt == 2
    assert not decide(d.state, fire, env()).changed  # a timer firing twice is harmless
    d = decide(d.state, result(t2, output={"ok": 1}), env())
    assert d.state is not None and d.state.status == "completed"


def test_permanent_failure_names_node_and_cause_and_refunds() -> None:
    f = flow(agent("a", retries=1, retry_backoff=0), agent("b", "a"))
    d = decide(None, start(f, credits=3), env())
    d = decide(d.state, result(tasks(d)[0], status="error", error_message="bad"), env())
    timer = next(iter(d.state.timers.values()))  # type: ignore[union-attr]
    d = decide(
        d.state,
        FireTimer.build(
            execution_id="e1", timer_id=timer.timer_id, kind="retry", node_id="a", due_at=T0
        ),
        env(),
    )
    d = decide(d.state, result(tasks(d)[0], status="error", error_message="bad again"), env())
    (failed,) = [e for e in d.events if isinstance(e, ExecutionFailed)]
    assert "node 'a'" in failed.data.error_message and "bad again" in failed.data.error_message
    assert d.commands[0].data.charge == 0  # type: ignore[attr-defined]


def test_timeout_fails_the_attempt() -> None:
    f = flow(agent("a", timeout=2))
    d = decide(None, start(f), env())
    (timer,) = d.state.timers.values()  # type: ignore[union-attr]
    assert timer.kind == "node_timeout"
    d = decide(
        d.state,
        FireTimer.build(
            execution_id="e1",
            timer_id=timer.timer_id,
            kind="node_timeout",
            node_id="a",
            attempt=1,
            due_at=timer.due_at,
        ),
        env(timer.due_at),
    )
    (failed,) = [e for e in d.events if isinstance(e, ExecutionFailed)]
    assert "timed out after 2s" in failed.data.error_message


def test_condition_false_skips_branch_and_its_dependents() -> None:
    f = flow(
        agent("score"),
        FlowNode(
            id="review", agent_id="echo", depends_on=("score",), when="score.decision == review"
        ),
        agent("notify", "review"),
        FlowNode(id="out", type="output", depends_on=("score",)),
    )
    d = decide(None, start(f), env())
    d = decide(d.state, result(tasks(d)[0], output={"decision": "approve"}), env())
    skipped = {e.data.node_id for e in d.events if isinstance(e, NodeSkipped)}
    assert skipped == {"review", "notify"}
    assert d.state is not None and d.state.status == "completed"


def test_human_in_the_loop_two_turns() -> None:
    f = flow(
        FlowNode(
            id="zoe", agent_id="zoe", type="input", config=NodeConfig(max_turns=2, input_timeout=60)
        )
    )
    d = decide(None, start(f), env())
    d = decide(d.state, result(tasks(d)[0], status="needs_input", question="income?"), env())
    assert d.state is not None and d.state.status == "waiting_input"
    assert any(isinstance(e, NodeWaitingInput) for e in d.events)
    d = decide(d.state, ProvideInput.build(execution_id="e1", input={"income": 5}), env())
    (t2,) = tasks(d)
    assert t2.data.attempt == 2 and t2.data.payload["conversation"][-1]["content"] == {"income": 5}
    d = decide(d.state, result(t2, status="needs_input", question="amount?"), env())
    d = decide(d.state, ProvideInput.build(execution_id="e1", input={"amount": 1}), env())
    d = decide(d.state, result(tasks(d)[0], status="needs_input", question="more?"), env())
    (failed,) = [e for e in d.events if isinstance(e, ExecutionFailed)]
    assert "max_turns 2" in failed.data.error_message


def test_cancel_tells_in_flight_agents_and_rejects_later_commands() -> None:
    f = flow(agent("a"), agent("b"))
    d = decide(None, start(f), env())
    d = decide(d.state, CancelExecution.build(execution_id="e1"), env())
    cancels = [t for t in d.tasks if isinstance(t.message, AgentCancel)]
    assert len(cancels) == 2 and d.state is not None and d.state.status == "cancelled"
    again = decide(d.state, CancelExecution.build(execution_id="e1"), env())
    assert isinstance(again.events[0], ExecutionCommandRejected)


def test_a_deregistered_agent_fails_at_once_and_wait_0_never_waits() -> None:
    f = flow(agent("a"))
    d = decide(None, start(f), env(agents={"echo": "deregistered"}))
    (failed,) = [e for e in d.events if isinstance(e, ExecutionFailed)]
    assert "agent 'echo' is deregistered" in failed.data.error_message
    f2 = flow(agent("a", wait_for_agent=0))
    d = decide(None, start(f2), env(agents={"echo": "inactive"}))
    (failed,) = [e for e in d.events if isinstance(e, ExecutionFailed)]
    assert failed.data.error_message == "node 'a': agent 'echo' is inactive"


def test_an_agent_of_another_user_fails_the_node_and_is_never_dispatched() -> None:
    f = flow(agent("a"), FlowNode(id="b", agent_id="mine", depends_on=("a",)))
    d = decide(None, start(f), env(owners={"echo": "u2"}))  # the execution is u1's
    assert d.tasks == []
    assert not [e for e in d.events if isinstance(e, NodeDispatched)]
    (failed,) = [e for e in d.events if isinstance(e, ExecutionFailed)]
    assert failed.data.error_message == "node 'a': agent 'echo' belongs to another user"
    assert failed.data.node_id == "a"
    (settle,) = d.commands
    assert isinstance(settle, SettleCredits) and settle.data.charge == 0


def test_a_later_node_on_another_users_agent_fails_when_it_is_reached() -> None:
    f = flow(agent("a"), FlowNode(id="b", agent_id="theirs", depends_on=("a",)))
    owners: dict[str, str | None] = {"echo": "u1", "theirs": "u2"}
    d = decide(None, start(f), env(owners=owners))
    (task,) = tasks(d)  # the user's own agent runs
    d = decide(d.state, result(task, output={"ok": 1}), env(owners=owners))
    assert tasks(d) == []
    (failed,) = [e for e in d.events if isinstance(e, ExecutionFailed)]
    assert "agent 'theirs' belongs to another user" in failed.data.error_message


def test_system_agents_and_the_users_own_are_dispatched() -> None:
    f = flow(agent("a"), FlowNode(id="b", agent_id="mine", depends_on=("a",)))
    owners: dict[str, str | None] = {"echo": "system", "mine": "u1"}
    d = decide(None, start(f), env(owners=owners))
    (task,) = tasks(d)
    d = decide(d.state, result(task, output={"ok": 1}), env(owners=owners))
    assert [t.data.to_agent for t in tasks(d)] == ["mine"]


def test_ownership_is_checked_before_waiting_for_the_agent() -> None:
    f = flow(agent("a", wait_for_agent=30))
    d = decide(None, start(f), env(agents={"echo": "inactive"}, owners={"echo": "u2"}))
    assert d.state is not None and d.state.timers == {}  # no agent_wait: it cannot help
    assert d.state.status == "failed"


def test_an_unknown_agent_has_no_owner_and_fails_as_unknown() -> None:
    f = flow(agent("a", wait_for_agent=0))
    d = decide(None, start(f), env(agents={"echo": "unknown"}, owners={"echo": None}))
    (failed,) = [e for e in d.events if isinstance(e, ExecutionFailed)]
    assert "agent 'echo' is unknown" in failed.data.error_message


def test_snapshot_round_trip_preserves_state() -> None:
    f = flow(agent("a", timeout=5), agent("b", "a"))
    d = decide(None, start(f, x=1), env())
    assert d.state is not None
    restored = ExecutionState.from_dict(d.state.to_dict())
    assert restored == d.state


def test_snapshot_of_a_waiting_execution_is_json_and_round_trips() -> None:
    f = flow(FlowNode(id="zoe", agent_id="zoe", type="input", config=NodeConfig(max_turns=3)))
    d = decide(None, start(f, x={"nested": [1, 2]}), env())
    d = decide(d.state, result(tasks(d)[0], status="needs_input", question="income?"), env())
    assert isinstance(d.state, ExecutionState)
    body = orjson.loads(orjson.dumps(d.state.to_dict()))  # what travels on the bus
    restored = state_from_dict(body)
    assert restored == d.state and restored.nodes["zoe"].conversation[0]["role"] == "agent"


def test_a_finished_execution_keeps_only_what_late_input_needs() -> None:
    f = flow(agent("a"))
    d = decide(None, start(f), env())
    d = decide(d.state, result(tasks(d)[0], output={"v": 1}), env())
    assert isinstance(d.state, ExecutionState) and d.state.terminal
    finished = FinishedExecution.of(d.state)
    body = orjson.loads(orjson.dumps(finished.to_dict()))
    assert "flow" not in body and state_from_dict(body) == finished
    # a duplicate start, a late result and a timer change nothing
    assert not decide(finished, start(f), env()).changed
    assert not decide(finished, result(tasks(decide(None, start(f), env()))[0]), env()).changed
    # a late cancel is rejected with the next seq, and the seq is kept for the one after
    late = decide(finished, CancelExecution.build(execution_id="e1"), env())
    (rejected,) = late.events
    assert isinstance(rejected, ExecutionCommandRejected)
    assert rejected.data.seq == d.state.seq + 1 and "already completed" in rejected.data.reason
    again = decide(late.state, ProvideInput.build(execution_id="e1", input={}), env())
    assert again.events[0].data.seq == d.state.seq + 2  # type: ignore[attr-defined]


@st.composite
def random_dags(draw: st.DrawFn) -> FlowDefinition:
    n = draw(st.integers(1, 9))
    nodes = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        nodes.append(agent(f"n{i}", *(f"n{d}" for d in sorted(deps))))
    return flow(*nodes)


@settings(max_examples=150, deadline=None)
@given(random_dags(), st.randoms(use_true_random=False))
def test_random_dags_respect_dependencies_and_terminate(
    f: FlowDefinition, rnd: random.Random
) -> None:
    d = decide(None, start(f), env())
    outstanding = {t.data.node_id: t for t in tasks(d)}
    state = d.state
    done: set[str] = set()
    dispatched: list[tuple[str, int]] = []
    deps = {n.id: set(n.depends_on) for n in f.nodes}
    for t in outstanding.values():
        dispatched.append((t.data.node_id, t.data.attempt))
    for _ in range(100):
        if not outstanding:
            break
        # every node whose dependencies are done is in flight together
        ready = {nid for nid in deps if nid not in done and deps[nid] <= done}
        assert ready == set(outstanding)
        node_id = rnd.choice(sorted(outstanding))
        task = outstanding.pop(node_id)
        d = decide(state, result(task, output={"n": node_id}), env())
        state = d.state
        done.add(node_id)
        for t in tasks(d):
            assert deps[t.data.node_id] <= done
            outstanding[t.data.node_id] = t
            dispatched.append((t.data.node_id, t.data.attempt))
    assert len(dispatched) == len(set(dispatched)) == len(f.nodes)
    assert state is not None and state.status == "completed"
    assert [e for e in d.events if isinstance(e, ExecutionCompleted)]
    assert all(isinstance(e.data.seq, int) for e in d.events)
    _ = NodeDispatched
