"""Backpressure: bounded work in flight per agent and per service; a slow agent delays
nobody else's nodes.

* An agent (the SDK, and so the relay per HTTP agent) runs at most ``concurrency`` tasks
  at once and, while saturated, pauses its partitions: further tasks wait in Kafka, not
  in memory, and other agents' tasks are on other topics and consumer groups.
* The transactional loop hands its handler at most ``max_batch`` records of a partition
  per transaction (the projector likewise per batch: tests/servicekit/test_projector.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from spine_agent import Agent, Task
from spine_agent.testing import TopicReader, publish, wait_caught_up
from spine_auth.handlers import AuthHandler
from spine_contracts import (
    AddCredits,
    AgentInfo,
    CreateUser,
    ExecutionCompleted,
    FlowDefinition,
    FlowNode,
    NodeCompleted,
    topics,
)
from spine_servicekit.kafka import KafkaConfig, Outgoing
from spine_servicekit.txloop import Incoming, TransactionalLoop
from support import fresh_topics, signer_of

from .helpers import key_hash, orchestrator_loop, start_execution

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FLOW = FlowDefinition(
    flow_id="two_speeds",
    nodes=(FlowNode(id="s", agent_id="slow"), FlowNode(id="f", agent_id="fast")),
)


async def test_a_saturated_agent_delays_no_other_agents_nodes(kafka: KafkaConfig) -> None:
    cfg = await fresh_topics(kafka, agents=["slow", "fast"])
    release = asyncio.Event()
    slow = Agent(
        AgentInfo(agent_id="slow"), signer=signer_of("slow"), concurrency=2, announce=False
    )
    fast = Agent(
        AgentInfo(agent_id="fast"), signer=signer_of("fast"), concurrency=4, announce=False
    )

    @slow.handler
    async def crawl(task: Task) -> dict[str, object]:
        await release.wait()
        return {"slow": task.execution_id}

    @fast.handler
    async def run(task: Task) -> dict[str, object]:
        return {"fast": task.execution_id}

    ids = [f"bp-{i:02d}" for i in range(16)]
    stopping = asyncio.Event()
    agents = [asyncio.create_task(a.serve(cfg, stopping)) for a in (slow, fast)]
    events = cfg.topic(topics.EXECUTION_EVENTS)
    try:
        async with orchestrator_loop(cfg, agents=["slow", "fast"]):
            starts = [(e, start_execution(e, FLOW)) for e in ids]
            await publish(cfg, cfg.topic(topics.EXECUTION_COMMANDS), starts)
            async with TopicReader(cfg, events) as reader:
                fast_done = await reader.wait_for(
                    lambda m: isinstance(m, NodeCompleted) and m.data.node_id == "f",
                    len(ids),
                    within=60,
                )
                # Every fast node finished while the slow agent sat on its first two tasks.
                assert not release.is_set()
                assert slow.in_flight == 2 and slow.stats.max_in_flight == 2
                assert slow.stats.received < len(ids)  # the rest waits in Kafka, not here
                assert not reader.matching(
                    lambda m: isinstance(m, NodeCompleted) and m.data.node_id == "s"
                )
                release.set()
                done = await reader.wait_for(
                    lambda m: isinstance(m, ExecutionCompleted), len(ids), within=60
                )
    finally:
        release.set()
        stopping.set()
        await asyncio.gather(*agents)
    assert {m.data.execution_id for m in fast_done} == set(ids)  # type: ignore[attr-defined]
    assert {m.data.execution_id for m in done} == set(ids)  # type: ignore[attr-defined]
    assert slow.stats.max_in_flight == 2 and fast.stats.max_in_flight <= 4
    assert slow.stats.succeeded == fast.stats.succeeded == len(ids)


class RecordingHandler(AuthHandler):
    def __init__(self, cfg: KafkaConfig) -> None:
        super().__init__(cfg, partition_count=cfg.partitions)
        self.batches: list[int] = []

    async def handle(self, partition: int, batch: Sequence[Incoming]) -> Sequence[Outgoing]:
        self.batches.append(len(batch))
        return await super().handle(partition, batch)


async def test_the_transactional_loop_takes_at_most_max_batch_per_transaction(
    kafka: KafkaConfig,
) -> None:
    cfg = await fresh_topics(kafka)
    user = "bp-user"
    create = CreateUser.build(user_id=user, email="bp@x.test", credits=1, key_hash=key_hash(user))
    commands = [(user, create)]
    commands += [(user, AddCredits.build(user_id=user, credits=1)) for _ in range(40)]
    await publish(cfg, cfg.topic(topics.AUTH_COMMANDS), commands)
    handler = RecordingHandler(cfg)
    loop = TransactionalLoop(
        cfg,
        group_id=f"{cfg.prefix}auth",
        input_topics=[cfg.topic(topics.AUTH_COMMANDS)],
        handler=handler,
        transactional_id_prefix=f"{cfg.prefix}auth",
        consumer_name="auth",
        max_batch=4,
    )
    async with loop:
        await wait_caught_up(cfg, f"{cfg.prefix}auth", cfg.topic(topics.AUTH_COMMANDS), within=30)
    assert sum(handler.batches) == 41
    assert max(handler.batches) == 4
