"""The orchestrator accepts a result only with the signature of the agent its task was sent
to (real Kafka, the real loop and handler): a result signed by another agent, an unsigned
one and a tampered one are dead-lettered with the reason and counted, and change nothing —
the execution completes with the right agent's answer, or its node times out as
configured; an HTTP agent's result verifies against the relay's key."""

from __future__ import annotations

import pytest
from crash.helpers import (
    active_agent,
    dead_letters,
    orchestrator_loop,
    origin_of,
    publish_raw,
    result_of,
    signed_result,
    start_execution,
)
from prometheus_client import REGISTRY
from spine_agent.testing import TopicReader, publish
from spine_contracts import (
    AgentInfo,
    AgentMessage,
    AgentRegistered,
    AgentResult,
    ExecutionCompleted,
    ExecutionFailed,
    FlowDefinition,
    FlowNode,
    NodeConfig,
    to_bytes,
    topics,
)
from spine_contracts.signing import RELAY_SIGNER
from spine_orchestrator.catalog import AgentCatalog
from spine_servicekit.kafka import KafkaConfig
from support import fresh_topics, read_to_end, signer_of

pytestmark = pytest.mark.integration

FLOW = FlowDefinition(flow_id="signed", nodes=(FlowNode(id="n", agent_id="sig-b"),))
SHORT = FlowDefinition(
    flow_id="signed-short",
    nodes=(FlowNode(id="n", agent_id="sig-b", config=NodeConfig(timeout=2, retries=0)),),
)
REASONS = ("unsigned", "unknown_key", "wrong_key", "bad_signature")


def failures() -> dict[str, float]:
    return {
        r: REGISTRY.get_sample_value(
            "spine_signature_failures_total", {"consumer": "orchestrator", "reason": r}
        )
        or 0.0
        for r in REASONS
    }


async def task_for(cfg: KafkaConfig, execution_id: str) -> AgentMessage:
    async with TopicReader(cfg, cfg.agent_tasks("sig-b")) as reader:
        [task] = await reader.wait_for(
            lambda m: isinstance(m, AgentMessage) and m.data.execution_id == execution_id
        )
    assert isinstance(task, AgentMessage)
    return task


def forgeries(cfg: KafkaConfig, task: AgentMessage) -> list[tuple[str, object, object]]:
    """A result by agent A for B's task, an unsigned one, a tampered one: each would have
    completed the node with the forger's output."""
    eid = task.data.execution_id
    forged = result_of(task, forged=True)
    by_a = signed_result(cfg, forged.model_copy(), signer_id="sig-a")
    claims_a = result_of(task, forged=True).model_copy(
        update={"data": forged.data.model_copy(update={"agent_id": "sig-a"})}
    )
    key, message, headers = signed_result(cfg, result_of(task, honest=True))
    bytes_changed = to_bytes(message).replace(b'"honest":true', b'"honest":false')
    return [
        by_a,  # signed by A, claiming B
        signed_result(cfg, claims_a),  # signed by A as itself: still not B's key
        (eid, forged, None),  # unsigned
        (key, bytes_changed, headers),  # B's signature over other bytes
    ]


async def test_forged_results_change_nothing_and_the_agents_answer_counts(
    kafka: KafkaConfig,
) -> None:
    cfg = await fresh_topics(kafka, agents=["sig-a", "sig-b"])
    results = cfg.topic(topics.AGENT_RESULTS)
    before = failures()
    async with orchestrator_loop(cfg, agents=["sig-a", "sig-b"]):
        await publish(
            cfg, cfg.topic(topics.EXECUTION_COMMANDS), [("sg-1", start_execution("sg-1", FLOW))]
        )
        task = await task_for(cfg, "sg-1")
        metas = await publish_raw(cfg, results, forgeries(cfg, task))  # type: ignore[arg-type]
        letters = [(await dead_letters(cfg, origin_of(m)))[0] for m in metas]
        await publish_raw(cfg, results, [signed_result(cfg, result_of(task, answer=42))])
        async with TopicReader(cfg, cfg.topic(topics.EXECUTION_EVENTS)) as events:
            [done] = await events.wait_for(
                lambda m: isinstance(m, ExecutionCompleted | ExecutionFailed), within=30
            )
    assert isinstance(done, ExecutionCompleted)
    assert done.data.output_data == {"n": {"answer": 42}}
    assert [d.data.consumer for d in letters] == ["orchestrator"] * 4
    assert {d.data.error_type for d in letters} == {"SignatureRefused"}
    assert [d.data.error.split(":")[0] for d in letters] == [
        "wrong_key",
        "wrong_key",
        "unsigned",
        "bad_signature",
    ]
    assert "'sig-b'" in letters[0].data.error  # names the agent the task went to
    after = failures()
    assert {r: after[r] - before[r] for r in REASONS} == {
        "unsigned": 1,
        "unknown_key": 0,
        "wrong_key": 2,
        "bad_signature": 1,
    }


async def test_a_node_with_only_forged_answers_times_out(kafka: KafkaConfig) -> None:
    cfg = await fresh_topics(kafka, agents=["sig-a", "sig-b"])
    async with orchestrator_loop(cfg, agents=["sig-a", "sig-b"]):
        start = start_execution("sg-2", SHORT)
        await publish(cfg, cfg.topic(topics.EXECUTION_COMMANDS), [("sg-2", start)])
        task = await task_for(cfg, "sg-2")
        await publish_raw(cfg, cfg.topic(topics.AGENT_RESULTS), forgeries(cfg, task))  # type: ignore[arg-type]
        async with TopicReader(cfg, cfg.topic(topics.EXECUTION_EVENTS)) as events:
            [done] = await events.wait_for(
                lambda m: isinstance(m, ExecutionCompleted | ExecutionFailed), within=30
            )
    assert isinstance(done, ExecutionFailed)
    assert "timed out" in done.data.error_message


def test_an_http_agents_result_must_carry_the_relays_signature() -> None:
    catalog = AgentCatalog()
    relay = signer_of(RELAY_SIGNER)
    http = AgentInfo(agent_id="web", transport="http", endpoint="https://web.example")
    catalog.apply(AgentRegistered.build(agent=http, active=True))
    assert catalog.signing_key("web") == (RELAY_SIGNER, None)  # the relay not issued yet
    catalog.apply(active_agent(RELAY_SIGNER))
    assert catalog.signing_key("web") == (RELAY_SIGNER, relay.public_key)
    assert catalog.signing_key("nobody") == ("nobody", None)


async def test_results_of_an_unknown_execution_are_still_checked(kafka: KafkaConfig) -> None:
    cfg = await fresh_topics(kafka, agents=["sig-b"])
    late = AgentResult.build(
        execution_id="sg-unknown", node_id="n", attempt=1, agent_id="sig-b", status="success"
    )
    async with orchestrator_loop(cfg, agents=["sig-b"]):
        [meta] = await publish_raw(
            cfg, cfg.topic(topics.AGENT_RESULTS), [("sg-unknown", late, None)]
        )
        [letter] = await dead_letters(cfg, origin_of(meta))
        await publish_raw(cfg, cfg.topic(topics.AGENT_RESULTS), [signed_result(cfg, late)])
    assert letter.data.error.startswith("unsigned:")
    events = await read_to_end(cfg, topics.EXECUTION_EVENTS)
    assert not [m for m in events if getattr(m.data, "execution_id", "") == "sg-unknown"]
