"""Waiting for an agent (inactive, or at capacity), the partition's capacity ledger, and
queued executions: pure, no I/O (DESIGN §16)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from spine_contracts import (
    AgentMessage,
    CancelExecution,
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionQueued,
    ExecutionStarted,
    FireTimer,
    FlowDefinition,
    FlowNode,
    NodeDispatched,
    NodeWaitingAgent,
    ReleaseExecution,
    SettleCredits,
    StartExecution,
)
from spine_orchestrator.dispatch import CapacityLedger
from spine_orchestrator.domain import (
    Decision,
    Environment,
    ExecutionState,
    decide,
    resume_node,
)

from .test_domain import T0, agent, env, flow, result, simple_condition, start, tasks


def fire(state: Any, kind: str = "agent_wait") -> FireTimer:
    (timer,) = [t for t in state.timers.values() if t.kind == kind]
    return FireTimer.build(
        execution_id=state.execution_id,
        timer_id=timer.timer_id,
        kind=kind,
        node_id=timer.node_id,
        attempt=timer.attempt,
        due_at=timer.due_at,
    )


def waits(d: Decision) -> list[NodeWaitingAgent]:
    return [e for e in d.events if isinstance(e, NodeWaitingAgent)]


def test_an_inactive_agent_is_waited_for_60s_by_default_with_one_deadline_timer() -> None:
    d = decide(None, start(flow(agent("a"))), env(agents={"echo": "inactive"}))
    assert tasks(d) == []
    (wait,) = waits(d)
    assert (wait.data.reason, wait.data.agent_id) == ("inactive", "echo")
    assert wait.data.wait_until == T0 + timedelta(seconds=60)
    (timer,) = d.state.timers.values()  # type: ignore[union-attr]
    assert (timer.kind, timer.due_at) == ("agent_wait", T0 + timedelta(seconds=60))
    assert d.state.nodes["a"].status == "waiting_agent"  # type: ignore[union-attr]
    # the deadline passes and the agent is still away: the node fails, naming the wait
    late = decide(d.state, fire(d.state), env(T0 + timedelta(seconds=60), {"echo": "inactive"}))
    (failed,) = [e for e in late.events if isinstance(e, ExecutionFailed)]
    assert failed.data.error_message == "node 'a': agent 'echo' is inactive (waited 60s)"


def test_the_flow_sets_the_wait_for_its_nodes_and_a_node_overrides_it() -> None:
    f = flow(agent("a"), agent("b", wait_for_agent=5), wait_for_agent=20)
    d = decide(None, start(f), env(agents={"echo": "unknown"}))
    due = {t.node_id: t.due_at - T0 for t in d.state.timers.values()}  # type: ignore[union-attr]
    assert due == {"a": timedelta(seconds=20), "b": timedelta(seconds=5)}


def test_a_resumed_node_is_dispatched_with_the_wait_in_its_event_and_its_timer_gone() -> None:
    d = decide(None, start(flow(agent("a", timeout=7))), env(agents={"echo": "inactive"}))
    later = T0 + timedelta(seconds=12)
    r = resume_node(d.state, "a", d.events[-1], env(later))  # type: ignore[arg-type]
    (task,) = tasks(r)
    (dispatched,) = [e for e in r.events if isinstance(e, NodeDispatched)]
    assert dispatched.data.waited_ms == 12_000
    assert task.data.deadline == later + timedelta(seconds=7)  # the timeout starts at dispatch
    assert [t.kind for t in r.state.timers.values()] == ["node_timeout"]  # type: ignore[union-attr]


def test_a_deadline_that_finds_the_agent_back_leaves_the_node_in_line() -> None:
    d = decide(None, start(flow(agent("a"))), env(agents={"echo": "inactive"}))
    back = decide(d.state, fire(d.state), env(T0 + timedelta(seconds=60)))
    assert tasks(back) == []
    assert [w.data.reason for w in waits(back)] == ["capacity"]
    assert back.state.nodes["a"].status == "waiting_agent"  # type: ignore[union-attr]


def test_resume_changes_nothing_for_a_node_that_is_not_waiting() -> None:
    d = decide(None, start(flow(agent("a"))), env())
    assert not resume_node(d.state, "a", d.events[-1], env()).changed  # type: ignore[arg-type]


def admitting(ledger: CapacityLedger, **kw: Any) -> Environment:
    return Environment(
        now=kw.get("now", T0),
        agent_availability=lambda _a: "active",
        evaluate_condition=simple_condition,
        admit=ledger.admit,
    )


def test_a_node_the_ledger_does_not_admit_waits_for_capacity_without_a_deadline() -> None:
    ledger = CapacityLedger(lambda _a: 1)
    f = flow(agent("a"), agent("b"))  # two roots on one agent with a share of 1
    d = decide(None, start(f), admitting(ledger))
    assert [t.data.node_id for t in tasks(d)] == ["a"]
    (wait,) = waits(d)
    assert (wait.data.node_id, wait.data.reason, wait.data.wait_until) == ("b", "capacity", None)
    assert [t.kind for t in d.state.timers.values()] == ["node_timeout"]  # type: ignore[union-attr]
    ledger.reconcile(d.state)  # type: ignore[arg-type]
    assert ledger.outstanding("echo") == 1 and ledger.waiting_for("echo") == [("e1", "b")]
    assert ledger.next_ready("echo") is None  # the share is full
    # a's result frees the slot; the partition then hands it to b
    done = decide(d.state, result(tasks(d)[0], output={}), admitting(ledger))
    ledger.reconcile(done.state)  # type: ignore[arg-type]
    assert ledger.next_ready("echo") == ("e1", "b")


def start_for(user: str, execution_id: str, f: FlowDefinition) -> StartExecution:
    return StartExecution.build(
        execution_id=execution_id,
        user_id=user,
        flow=f,
        flow_version=f.content_hash(),
        credits_reserved=1,
    )


def test_waiting_nodes_are_dispatched_across_tenants_in_turn() -> None:
    ledger = CapacityLedger(lambda _a: 2)
    f = flow(agent("a"))
    states: dict[str, Any] = {}
    order = [("A", f"a{i}") for i in range(6)] + [("B", "b0"), ("B", "b1"), ("C", "c0")]
    for user, eid in order:
        d = decide(None, start_for(user, eid, f), admitting(ledger))
        ledger.reconcile(d.state)  # type: ignore[arg-type]
        states[eid] = d.state
    assert ledger.outstanding("echo") == 2  # a0 and a1 went at once
    # every result frees one slot: the line takes A, B, C in turn, then A, B, then A
    dispatched = []
    running = ["a0", "a1"]
    while running:
        eid = running.pop(0)
        state = states[eid]
        (task,) = [
            AgentMessage.build(
                execution_id=eid,
                node_id="a",
                attempt=state.nodes["a"].attempt,
                to_agent="echo",
                payload={},
                timestamp=T0,
            )
        ]
        done = decide(state, result(task, output={}), admitting(ledger))
        ledger.reconcile(done.state)  # type: ignore[arg-type]
        while (key := ledger.next_ready("echo")) is not None:
            r = resume_node(states[key[0]], key[1], done.events[-1], admitting(ledger))
            ledger.reconcile(r.state)  # type: ignore[arg-type]
            states[key[0]] = r.state
            dispatched.append(key[0])
            running.append(key[0])
    assert dispatched == ["a2", "b0", "c0", "a3", "b1", "a4", "a5"]
    assert ledger.outstanding("echo") == 0 and ledger.waiting_agents() == []


def test_a_newcomer_never_overtakes_the_line_and_a_cancel_leaves_it() -> None:
    ledger = CapacityLedger(lambda _a: 1)
    f = flow(agent("a"))
    first = decide(None, start_for("A", "x1", f), admitting(ledger))
    ledger.reconcile(first.state)  # type: ignore[arg-type]
    second = decide(None, start_for("A", "x2", f), admitting(ledger))
    ledger.reconcile(second.state)  # type: ignore[arg-type]
    gone = decide(second.state, CancelExecution.build(execution_id="x2"), admitting(ledger))
    ledger.reconcile(gone.state)  # type: ignore[arg-type]
    assert ledger.waiting_for("echo") == []
    # x1's failure gives its slot back although nobody else waits
    failed = decide(first.state, result(tasks(first)[0], "error"), admitting(ledger))
    ledger.reconcile(failed.state)  # type: ignore[arg-type]
    assert ledger.outstanding("echo") == 0


def test_an_unlimited_agent_always_admits_and_rebuild_restores_the_line() -> None:
    unlimited = CapacityLedger(lambda _a: None)
    assert all(unlimited.admit("echo", "u", f"e{i}", "a") for i in range(1000))
    ledger = CapacityLedger(lambda _a: 1)
    f = flow(agent("a"))
    states = []
    for user, eid in [("A", "r1"), ("A", "r2"), ("B", "r3")]:
        d = decide(None, start_for(user, eid, f), admitting(ledger, now=T0))
        ledger.reconcile(d.state)  # type: ignore[arg-type]
        states.append(d.state)
    fresh = CapacityLedger(lambda _a: 1)
    fresh.rebuild(states)  # type: ignore[arg-type]
    assert fresh.outstanding("echo") == 1
    assert sorted(fresh.waiting_for("echo")) == [("r2", "a"), ("r3", "a")]


def start_queued(f: FlowDefinition, credits: int = 1) -> StartExecution:
    return StartExecution.build(
        execution_id="e1",
        user_id="u1",
        flow=f,
        flow_version=f.content_hash(),
        credits_reserved=credits,
        queued=True,
    )


def test_a_queued_execution_dispatches_nothing_until_released() -> None:
    queued = start_queued(flow(agent("a")))
    d = decide(None, queued, env())
    assert [type(e) for e in d.events] == [ExecutionQueued]
    assert d.state is not None and d.state.status == "queued" and d.tasks == []
    assert isinstance(d.state, ExecutionState) and d.state.timers == {}
    again = decide(d.state, queued, env())
    assert not again.changed
    released = decide(d.state, ReleaseExecution.build(execution_id="e1", user_id="u1"), env())
    assert [type(e) for e in released.events][:1] == [ExecutionStarted]
    assert released.events[0].data.seq == 2 and len(tasks(released)) == 1
    twice = decide(released.state, ReleaseExecution.build(execution_id="e1", user_id="u1"), env())
    assert not twice.changed


def test_cancelling_a_queued_execution_refunds_it() -> None:
    queued = start_queued(flow(agent("a")), credits=5)
    d = decide(None, queued, env())
    c = decide(d.state, CancelExecution.build(execution_id="e1"), env())
    assert [type(e) for e in c.events] == [ExecutionCancelled]
    (settle,) = c.commands
    assert isinstance(settle, SettleCredits) and settle.data.charge == 0
    assert settle.data.outcome == "cancelled"


def test_a_node_of_a_flow_without_agent_never_asks_the_ledger() -> None:
    ledger = CapacityLedger(lambda _a: 0)
    f = FlowDefinition(flow_id="f", nodes=(FlowNode(id="o", type="output"),))
    d = decide(None, start(f), admitting(ledger))
    assert d.state is not None and d.state.status == "completed"
