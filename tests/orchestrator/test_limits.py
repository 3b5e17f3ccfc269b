"""The message limit as a pure rule (spine_orchestrator.limits): a decision whose records
would not fit in one Kafka message is replaced by the failure of its node or execution, with
an error naming the size and the limit, and what replaces it fits. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from spine_contracts import (
    AgentInfo,
    AgentMessage,
    AgentRegistered,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    FireTimer,
    FlowDefinition,
    FlowNode,
    Message,
    NodeCompleted,
    NodeConfig,
    NodeDispatched,
    NodeFailed,
    NodeWaitingInput,
    ProvideInput,
    SettleCredits,
    StartExecution,
    to_bytes,
    topics,
)
from spine_kafka.security import KafkaSecurity
from spine_orchestrator.catalog import AgentCatalog
from spine_orchestrator.domain import (
    AnyState,
    Decision,
    Environment,
    ExecutionState,
    FinishedExecution,
    decide,
)
from spine_orchestrator.encodings import Encodings
from spine_orchestrator.handlers import OrchestratorHandler
from spine_orchestrator.limits import MessageLimit, decide_within, kept, oversize, resume_within
from spine_orchestrator.timers import TimerScheduler
from spine_servicekit.kafka import Incoming, KafkaConfig

from .test_domain import result

T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: a limit small enough for tests to cross with payloads of tens of kilobytes
LIMIT = 40_000


def env(now: datetime = T0) -> Environment:
    def condition(_expr: str, _inp: Mapping[str, Any], _nodes: Mapping[str, Any]) -> bool:
        return True

    return Environment(
        now=now, agent_availability=lambda _a: "active", evaluate_condition=condition
    )


def limit(max_bytes: int = LIMIT) -> MessageLimit:
    checked = Encodings(checked=True).limit(max_bytes)
    assert checked is not None
    return checked


def flow(*nodes: FlowNode) -> FlowDefinition:
    return FlowDefinition(flow_id="f", nodes=nodes)


def agent(node_id: str, *deps: str, **config: Any) -> FlowNode:
    return FlowNode(id=node_id, agent_id="echo", depends_on=deps, config=NodeConfig(**config))


def start(f: FlowDefinition, **inp: Any) -> StartExecution:
    return StartExecution.build(
        execution_id="e1",
        user_id="u1",
        flow=f,
        flow_version=f.content_hash(),
        input_data=inp,
        credits_reserved=3,
    )


def tasks_of(decision: Decision) -> dict[str, AgentMessage]:
    return {
        t.message.data.node_id: t.message
        for t in decision.tasks
        if isinstance(t.message, AgentMessage)
    }


def task_of(decision: Decision) -> AgentMessage:
    [task] = tasks_of(decision).values()
    return task


def running(decision: Decision) -> ExecutionState:
    assert isinstance(decision.state, ExecutionState) and not decision.state.terminal
    return decision.state


def of(decision: Decision, cls: type[Message]) -> list[Any]:
    return [e for e in decision.events if isinstance(e, cls)]


def fits(decision: Decision, max_bytes: int = LIMIT) -> bool:
    """Every record the handler would publish for it, encoded, is within the limit."""
    records = [*decision.events, *(t.message for t in decision.tasks), *decision.commands]
    sizes = [len(to_bytes(m)) for m in records]
    assert decision.state is not None
    snapshot = Encodings(checked=True).state_size(kept(decision.state))
    return max([*sizes, snapshot]) <= max_bytes


def x(size: int) -> str:
    return "x" * size


# --- decisions that fit are the domain's own --------------------------------------------------


def test_a_decision_that_fits_is_left_as_decided() -> None:
    f = flow(agent("a"), agent("b", "a"))
    d = decide_within(None, start(f, q=1), env(), limit())
    assert [type(e) for e in d.events] == [ExecutionStarted, NodeDispatched]
    assert oversize(d, limit()) is None
    later = decide_within(running(d), result(task_of(d), output={"text": x(1000)}), env(), limit())
    assert [type(e) for e in later.events] == [NodeCompleted, NodeDispatched]


def test_an_unchanged_decision_is_not_measured() -> None:
    def refuse(_: Any) -> int:
        raise AssertionError("measured")

    strict = MessageLimit(1, refuse, refuse)
    d = decide_within(None, start(flow(agent("a")), q=1), env(), limit())
    state = running(d)
    late = result(task_of(d)).model_copy()
    late = late.model_copy(update={"data": late.data.model_copy(update={"attempt": 7})})
    assert decide_within(state, late, env(), strict).changed is False


# --- a result too large ---------------------------------------------------------------------


def test_a_result_too_large_fails_its_node_at_once_naming_size_and_limit() -> None:
    d = decide_within(None, start(flow(agent("a"), agent("b", "a")), q=1), env(), limit())
    big = result(task_of(d), output={"text": x(50_000)})
    plain = decide(running(d), big, env())
    [completed] = of(plain, NodeCompleted)
    size = len(to_bytes(completed))
    assert size > LIMIT

    failed = decide_within(running(d), big, env(), limit())

    [node_failed] = of(failed, NodeFailed)
    [execution_failed] = of(failed, ExecutionFailed)
    error = f"result of {size:,} bytes exceeds the 40,000-byte message limit"
    assert node_failed.data.node_id == "a" and node_failed.data.error_message == error
    assert not node_failed.data.will_retry
    assert execution_failed.data.error_message == f"node 'a' failed: {error}"
    assert execution_failed.data.node_id == "a"
    assert not of(failed, NodeCompleted) and not failed.tasks  # nothing of the output
    assert [c.data.outcome for c in failed.commands if isinstance(c, SettleCredits)] == ["failed"]
    assert failed.state is not None and isinstance(kept(failed.state), FinishedExecution)
    assert fits(failed)
    # the same message id: the failure is caused by the result that did not fit
    assert all(e.causation_id == str(big.message_id) for e in failed.events)


def test_a_result_too_large_is_retried_as_its_nodes_rules_say() -> None:
    d = decide_within(None, start(flow(agent("a", retries=1)), q=1), env(), limit())
    failed = decide_within(
        running(d), result(task_of(d), output={"text": x(50_000)}), env(), limit()
    )
    [node_failed] = of(failed, NodeFailed)
    assert node_failed.data.will_retry and node_failed.data.error_message.startswith("result of")
    state = running(failed)
    assert state.nodes["a"].output is None and state.nodes["a"].status == "pending"
    assert [t.kind for t in state.timers.values()] == ["retry"]
    assert fits(failed)


def test_a_result_that_fits_alone_but_not_in_the_execution_state_fails_the_node() -> None:
    # the input (25 kB) and a's output (25 kB) each fit; the state holding both does not
    d = decide_within(None, start(flow(agent("a"), agent("b")), q=x(25_000)), env(), limit())
    big = result(tasks_of(d)["a"], output={"text": x(25_000)})
    failed = decide_within(running(d), big, env(), limit())
    [node_failed] = of(failed, NodeFailed)
    error = node_failed.data.error_message
    assert error.startswith(f"result of {len(to_bytes(big)):,} bytes does not fit: ")
    assert "the execution state would be " in error
    assert error.endswith("bytes, over the 40,000-byte message limit")
    assert of(failed, ExecutionFailed) and fits(failed)


def test_a_result_whose_next_task_would_not_fit_fails_the_node_that_answered() -> None:
    # b's task carries the input and a's output: 18 kB + 25 kB
    f = flow(agent("a"), agent("b", "a"))
    d = decide_within(None, start(f, q=x(18_000)), env(), limit(50_000))
    failed = decide_within(
        running(d), result(task_of(d), output={"text": x(25_000)}), env(), limit(40_000)
    )
    [node_failed] = of(failed, NodeFailed)
    assert node_failed.data.node_id == "a"
    assert "the task for node 'b' would be " in node_failed.data.error_message
    assert not failed.tasks and fits(failed)


def test_a_question_too_large_fails_the_node() -> None:
    d = decide_within(None, start(flow(agent("a", max_turns=3)), q=1), env(), limit())
    asked = result(task_of(d), status="needs_input", question=x(50_000))
    failed = decide_within(running(d), asked, env(), limit())
    assert not of(failed, NodeWaitingInput)
    [node_failed] = of(failed, NodeFailed)
    assert node_failed.data.error_message.startswith("result of ")
    assert fits(failed)


def test_an_error_message_too_large_is_replaced_by_one_that_fits() -> None:
    d = decide_within(None, start(flow(agent("a")), q=1), env(), limit())
    failed = decide_within(
        running(d), result(task_of(d), status="error", error_message=x(50_000)), env(), limit()
    )
    [execution_failed] = of(failed, ExecutionFailed)
    assert "exceeds the 40,000-byte message limit" in execution_failed.data.error_message
    assert fits(failed)


# --- other inputs ----------------------------------------------------------------------------


def test_a_start_too_large_is_recorded_without_its_input_and_failed() -> None:
    cmd = start(flow(agent("a")), q=x(50_000))
    failed = decide_within(None, cmd, env(), limit())
    [started] = of(failed, ExecutionStarted)
    [execution_failed] = of(failed, ExecutionFailed)
    assert started.data.input_data == {} and started.data.flow == cmd.data.flow
    error = execution_failed.data.error_message
    assert error.startswith("input too large: execution.started message of ")
    assert error.endswith(" bytes exceeds the 40,000-byte message limit")
    assert not failed.tasks and fits(failed)
    [settle] = [c for c in failed.commands if isinstance(c, SettleCredits)]
    assert settle.data.outcome == "failed" and settle.data.charge == 0


def test_a_retry_whose_task_no_longer_fits_fails_that_node_at_once() -> None:
    f = flow(agent("a", retries=2))
    d = decide_within(None, start(f, q=x(30_000)), env(), limit(50_000))
    first = decide_within(running(d), result(task_of(d), status="error"), env(), limit(50_000))
    state = running(first)
    [timer] = state.timers.values()
    fire = FireTimer.build(
        execution_id="e1",
        timer_id=timer.timer_id,
        kind=timer.kind,
        node_id=timer.node_id,
        attempt=timer.attempt,
        due_at=timer.due_at,
    )
    # the limit is lower now (a smaller SPINE_KAFKA_MAX_MESSAGE_BYTES after a restart)
    failed = decide_within(state, fire, env(T0 + timedelta(seconds=5)), limit(30_000))
    [node_failed] = of(failed, NodeFailed)
    assert node_failed.data.error_message.startswith("node 'a': task of ")
    assert node_failed.data.error_message.endswith("exceeds the 30,000-byte message limit")
    assert not node_failed.data.will_retry  # the same task would not fit again
    assert not failed.tasks and fits(failed, 30_000)


def test_an_input_that_makes_the_state_too_large_fails_the_waiting_node() -> None:
    d = decide_within(None, start(flow(agent("zoe", max_turns=3)), q=x(15_000)), env(), limit())
    asked = decide_within(
        running(d), result(task_of(d), status="needs_input", question="?"), env(), limit()
    )
    answer = ProvideInput.build(execution_id="e1", input={"text": x(20_000)})
    # the answer fits alone; the next task carries it beside the execution's input
    again = decide_within(running(asked), answer, env(), limit(45_000))
    failed = decide_within(running(asked), answer, env(), limit(30_000))
    assert again.tasks and not of(again, NodeFailed)
    [node_failed] = of(failed, NodeFailed)
    assert node_failed.data.node_id == "zoe"
    assert node_failed.data.error_message.startswith("node 'zoe': task of ")
    assert fits(failed, 30_000)


def test_a_completion_whose_output_would_not_fit_fails_the_execution() -> None:
    # two exits of 20 kB each: each completes, their joint output_data does not fit
    f = flow(agent("a"), agent("b"))
    d = decide_within(None, start(f, q=1), env(), limit())
    tasks = tasks_of(d)
    after_a = decide_within(
        running(d), result(tasks["a"], output={"text": x(20_000)}), env(), limit()
    )
    after_b = decide_within(
        running(after_a), result(tasks["b"], output={"text": x(20_000)}), env(), limit()
    )
    assert of(after_b, ExecutionFailed) and not of(after_b, ExecutionCompleted)
    [node_failed] = of(after_b, NodeFailed)
    assert node_failed.data.node_id == "b"
    assert "the execution.completed message would be " in node_failed.data.error_message
    assert fits(after_b)


def test_encodings_are_shared_with_what_is_sent() -> None:
    enc = Encodings(checked=True)
    d = decide_within(None, start(flow(agent("a")), q=1), env(), enc.limit(LIMIT))
    assert Encodings(checked=False).limit(LIMIT) is None  # unchecked: measured afterwards
    state: AnyState = running(d)
    assert enc.snapshot(state) is enc.snapshot(state)  # measured once, sent as measured
    event = d.events[0]
    assert enc.value(event) is enc.value(event) and enc.value(event) == to_bytes(event)


# --- the handler: one batch, one execution too large ------------------------------------------


async def test_the_handler_fails_only_the_execution_that_does_not_fit() -> None:
    cfg = KafkaConfig(
        bootstrap_servers="unused:9092", max_message_bytes=100_000, security=KafkaSecurity()
    )
    catalog = AgentCatalog()
    catalog.apply(
        AgentRegistered.build(agent=AgentInfo(agent_id="echo"), active=True, owner="system")
    )

    async def never(_command: FireTimer, _execution_id: str) -> None:
        raise AssertionError("no timer is due in this test")

    handler = OrchestratorHandler(
        cfg,
        catalog=catalog,
        timers=TimerScheduler(never),
        evaluate_condition=lambda *_: True,
        clock=lambda: T0,
    )
    commands = cfg.topic(topics.EXECUTION_COMMANDS)
    f = flow(agent("a"))
    huge = start(f, q=x(120_000))
    huge = huge.model_copy(update={"data": huge.data.model_copy(update={"execution_id": "huge"})})
    small = start(f, q=1)
    batch = [
        Incoming(commands, 0, offset, m.data.execution_id, 0, m)
        for offset, m in enumerate([huge, small])
    ]

    out = await handler.handle(0, batch)

    by_execution: dict[str, list[str]] = {}
    for item in out:
        by_execution.setdefault(item.key, []).append(item.message.type)
        assert item.size() <= cfg.max_message_bytes
        assert "value" in item.__dict__  # encoded once, for the check, and sent as such
    assert by_execution["huge"] == ["execution.started", "execution.failed", "execution.snapshot"]
    assert by_execution["u1"] == ["auth.settle_credits"]  # keyed by user: its credits back
    assert by_execution["e1"] == [
        "execution.started",
        "execution.node_dispatched",
        "agent.message",
        "execution.snapshot",
    ]
    [failed] = [i.message for i in out if isinstance(i.message, ExecutionFailed)]
    assert failed.data.error_message.startswith("input too large: execution.started message of ")
    # the live gauge follows the states through the second pass: e1 runs, huge has ended
    assert handler.live_executions == 1
    assert failed.data.error_message.endswith(" bytes exceeds the 97,952-byte message limit")


def test_a_node_resumed_after_waiting_for_its_agent_fails_at_once_when_its_task_is_too_big() -> (
    None
):
    # a safety net: a waiting node's state passed the check when it began to wait, and its
    # task carries no more than the state; a limit lowered meanwhile is what trips it
    def admit_none(_a: str, _u: str, _e: str, _n: str) -> bool:
        return False

    base = env()
    waiting_env = Environment(
        now=T0,
        agent_availability=lambda _a: "active",
        evaluate_condition=base.evaluate_condition,
        admit=admit_none,
    )
    d = decide_within(None, start(flow(agent("a")), blob="x" * 15_000), waiting_env, limit())
    state = running(d)
    assert state.nodes["a"].status == "waiting_agent"
    small = resume_within(state, "a", d.events[-1], env(), limit(LIMIT))
    assert of(small, NodeDispatched) and fits(small)
    tight = resume_within(state, "a", d.events[-1], env(), limit(12_000))
    (failed,) = of(tight, ExecutionFailed)
    assert failed.data.error_message.startswith("node 'a': ")
    assert "12,000-byte message limit" in failed.data.error_message
    assert tight.tasks == [] and fits(tight, 12_000)
