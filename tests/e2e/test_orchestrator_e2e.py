"""End to end through Kafka: the orchestrator, the registry and the real agent processes."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from spine_contracts import (
    DeregisterAgent,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    FlowDefinition,
    FlowNode,
    NodeCompleted,
    NodeConfig,
    NodeDispatched,
    NodeFailed,
    NodeSkipped,
    NodeWaitingAgent,
    NodeWaitingInput,
    topics,
)
from spine_flows import load_flow_file
from spine_servicekit.kafka import KafkaConfig
from support import read_to_end

from .harness import ROOT, TERMINAL_EVENTS, Stack, orchestrator_env

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CREDIT = load_flow_file(ROOT / "flows" / "credit_analysis.yaml")
#: a node's ``delay_ms`` that outlasts any test: the node is held until the test acts
#: (cancels, times it out, releases it), never until a race with a fixed delay is won
HELD_MS = 600_000
APPLICANT = {"name": "Ana", "income": 6000, "amount": 12000, "term_months": 24, "debts": 300}


def echo(node_id: str, *deps: str, when: str | None = None, **config: Any) -> FlowNode:
    return FlowNode(
        id=node_id, agent_id="echo", depends_on=deps, when=when, config=NodeConfig(**config)
    )


def flow(flow_id: str, *nodes: FlowNode, **kw: Any) -> FlowDefinition:
    return FlowDefinition(flow_id=flow_id, nodes=nodes, **kw)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    kafka: KafkaConfig,
    infra: dict[str, str],
    topic_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    flows_dir: Path = tmp_path_factory.mktemp("flows")
    env = orchestrator_env(
        kafka,
        infra,
        topic_prefix,
        flows_dir,
        # an agent killed in a test goes inactive within seconds, not the default 15
        SPINE_REGISTRY_HEARTBEAT_TTL="4",
        SPINE_REGISTRY_SWEEP_INTERVAL="1",
    )
    s = Stack(kafka, env)
    await s.start("registry", "orchestrator", "echo", "zoe", "eddie")
    await s.agents_active("echo", "zoe", "eddie")
    yield s
    await s.stop()


async def test_credit_analysis_with_complete_input(stack: Stack) -> None:
    eid = await stack.start_execution(CREDIT, APPLICANT)
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionCompleted), done
    result = done.data.output_data["result"]
    assert result["decision"] in {"approve", "review", "reject"}
    assert 0 <= result["score"] <= 1


async def test_credit_analysis_missing_fields_over_two_turns(stack: Stack) -> None:
    eid = await stack.start_execution(CREDIT, {"name": "Luis"})
    first = await stack.wait_event(eid, NodeWaitingInput)
    assert set(first.data.missing_fields) == {"income", "amount", "term_months"}
    await stack.provide_input(eid, {"user_message": "income: 4000\namount: 8000"})
    await stack.wait_for(lambda: len(stack.of_type(eid, NodeWaitingInput)) == 2)
    second = stack.of_type(eid, NodeWaitingInput)[1]
    assert list(second.data.missing_fields) == ["term_months"]
    await stack.provide_input(eid, {"term_months": 12})
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionCompleted), done
    assert done.data.output_data["result"]["decision"] in {"approve", "review", "reject"}


async def test_diamond_branches_run_in_parallel(stack: Stack) -> None:
    f = flow(
        "diamond",
        echo("a"),
        echo("b", "a", delay_ms=300),
        echo("c", "a", delay_ms=300),
        echo("d", "b", "c"),
    )
    eid = await stack.start_execution(f)
    assert isinstance(await stack.terminal(eid), ExecutionCompleted)
    dispatched = {e.data.node_id: e.occurred_at for e in stack.of_type(eid, NodeDispatched)}
    completed = {e.data.node_id: e.occurred_at for e in stack.of_type(eid, NodeCompleted)}
    # both branches were handed out before either came back
    assert max(dispatched["b"], dispatched["c"]) < min(completed["b"], completed["c"])
    assert dispatched["d"] >= max(completed["b"], completed["c"])


async def test_false_condition_skips_the_branch(stack: Stack) -> None:
    f = flow("cond", echo("a"), echo("b", "a", when="input.amount > 100"), echo("c", "a"))
    eid = await stack.start_execution(f, {"amount": 5})
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionCompleted)
    assert [e.data.node_id for e in stack.of_type(eid, NodeSkipped)] == ["b"]
    assert set(done.data.output_data) == {"c"}


async def test_node_that_fails_once_succeeds_on_retry(stack: Stack) -> None:
    f = flow("retry", echo("a", fail_times=1, retries=2, retry_backoff=0.1))
    eid = await stack.start_execution(f)
    assert isinstance(await stack.terminal(eid), ExecutionCompleted)
    attempts = [e.data.attempt for e in stack.of_type(eid, NodeDispatched)]
    assert attempts == [1, 2]
    (failed,) = stack.of_type(eid, NodeFailed)
    assert failed.data.will_retry


async def test_permanent_failure_names_the_node(stack: Stack) -> None:
    f = flow("broken", echo("a"), echo("b", "a", fail=True, retries=1, retry_backoff=0.1))
    eid = await stack.start_execution(f)
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionFailed)
    assert "node 'b'" in done.data.error_message and "fail" in done.data.error_message
    assert len(stack.of_type(eid, NodeDispatched)) == 3  # a, b#1, b#2


async def test_timeout_fails_the_node(stack: Stack) -> None:
    f = flow("slow", echo("a", delay_ms=HELD_MS, timeout=0.5))
    eid = await stack.start_execution(f)
    done = await stack.terminal(eid)
    await stack.release("echo", eid)
    assert isinstance(done, ExecutionFailed)
    assert "timed out after 0.5s" in done.data.error_message


async def test_cancel_mid_flight(stack: Stack) -> None:
    f = flow("cancel", echo("a", delay_ms=HELD_MS), echo("b", "a"))  # cancelling releases it
    eid = await stack.start_execution(f)
    await stack.wait_event(eid, NodeDispatched)
    await stack.cancel(eid)
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionCancelled)
    assert [e.data.node_id for e in stack.of_type(eid, NodeDispatched)] == ["a"]


async def test_orchestrator_killed_mid_flow_finishes_every_execution_once(stack: Stack) -> None:
    f = flow(
        "chain", echo("a", delay_ms=200), echo("b", "a", delay_ms=200), echo("c", "b", delay_ms=200)
    )
    ids = [await stack.start_execution(f) for _ in range(20)]
    await stack.wait_for(lambda: sum(len(stack.of_type(i, NodeCompleted)) for i in ids) >= 10)
    stack.kill("orchestrator")
    await stack.wait_exit("orchestrator")
    await stack.spawn("orchestrator")
    for eid in ids:
        assert isinstance(await stack.terminal(eid, timeout=120), ExecutionCompleted)
    # counted from the whole log, read to its end: a duplicate written after the first
    # terminal event is in it
    log = await read_to_end(stack.kafka, topics.EXECUTION_EVENTS)
    for eid in ids:
        trail = [e for e in log if getattr(e.data, "execution_id", None) == eid]
        terminal = [e for e in trail if isinstance(e, TERMINAL_EVENTS)]
        assert len(terminal) == 1, eid
        keys = [(e.data.node_id, e.data.attempt) for e in trail if isinstance(e, NodeDispatched)]
        assert sorted(keys) == [("a", 1), ("b", 1), ("c", 1)], (eid, keys)
        seqs = [e.data.seq for e in trail]
        assert seqs == list(range(1, len(seqs) + 1)), (eid, seqs)
        assert max(collections.Counter(seqs).values()) == 1


async def test_an_agent_restart_fails_no_execution_and_the_trail_shows_the_wait(
    stack: Stack,
) -> None:
    """A rolling deploy of an agent: killed, gone past its heartbeat TTL while new nodes are
    dispatched to it, back later. A task sent before it was seen inactive waits on its topic;
    the nodes started while it was inactive wait for it (wait_for_agent, default 60 s) and
    are dispatched when it returns — woken by its return, not by a timer."""
    f = flow("restart", echo("a"), echo("b", "a"))
    # a task the agent holds when it is killed stays on its topic, uncommitted
    on_topic = await stack.start_execution(flow("restart-held", echo("a", delay_ms=2000)))
    await stack.wait_event(on_topic, NodeDispatched)
    stack.kill("echo")
    await stack.wait_exit("echo")
    await stack.wait_for(lambda: stack.agents.get("echo") is False)
    waiting = [await stack.start_execution(f) for _ in range(3)]
    for eid in waiting:
        wait = await stack.wait_event(eid, NodeWaitingAgent)
        assert (wait.data.node_id, wait.data.reason) == ("a", "inactive")
    assert not any(stack.of_type(eid, NodeDispatched) for eid in waiting)
    await stack.spawn("echo")
    for eid in [on_topic, *waiting]:
        assert isinstance(await stack.terminal(eid, timeout=90), ExecutionCompleted), eid
    for eid in waiting:
        first = stack.of_type(eid, NodeDispatched)[0]
        wait = stack.of_type(eid, NodeWaitingAgent)[0]
        assert first.data.node_id == "a" and first.data.waited_ms is not None
        assert first.data.seq > wait.data.seq  # the trail: waiting, then dispatched
    # taken again when the agent returned: one dispatch, no wait, no retry
    assert len(stack.of_type(on_topic, NodeDispatched)) == 1


async def test_agent_deregistered_mid_flow_fails_the_next_node(stack: Stack) -> None:
    # ``a`` asks for input: the execution is held there until the deregistration is seen
    f = flow(
        "dereg", echo("a", needs_input=True), FlowNode(id="b", agent_id="eddie", depends_on=("a",))
    )
    eid = await stack.start_execution(f)
    await stack.wait_event(eid, NodeWaitingInput)
    await stack.publish(topics.REGISTRY_REQUESTS, "eddie", DeregisterAgent.build(agent_id="eddie"))
    await stack.wait_for(lambda: stack.agents.get("eddie") is False)
    await stack.provide_input(eid, {"message": "go on"})
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionFailed)
    assert "agent 'eddie' is deregistered" in done.data.error_message
