"""An agent's declared capacity through Kafka (DESIGN §16): the real orchestrator, registry
and echo agent. echo runs with ``SPINE_ECHO_CAPACITY=2`` and so declares 2; with the
tests' 2 partitions each orchestrator partition keeps at most one of its tasks outstanding,
and the tenants waiting for it take turns."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from spine_auth.handlers import partition_for
from spine_contracts import (
    ExecutionCompleted,
    FlowDefinition,
    FlowNode,
    NodeCompleted,
    NodeConfig,
    NodeDispatched,
    NodeWaitingAgent,
    StartExecution,
    topics,
)
from spine_servicekit.kafka import KafkaConfig

from .harness import Stack, orchestrator_env

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FLOW = FlowDefinition(
    flow_id="slow",
    nodes=(FlowNode(id="a", agent_id="echo", config=NodeConfig(delay_ms=150)),),
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    kafka: KafkaConfig,
    infra: dict[str, str],
    topic_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    flows_dir: Path = tmp_path_factory.mktemp("flows")
    s = Stack(kafka, orchestrator_env(kafka, infra, topic_prefix, flows_dir))
    await s.start("registry", "orchestrator")
    # echo declares SPINE_ECHO_CAPACITY (its AgentInfo's concurrency), and runs 2 at once
    await s.spawn("echo", {"SPINE_ECHO_CAPACITY": "2", "SPINE_AGENT_CONCURRENCY": "2"})
    await s.agents_active("echo")
    yield s
    await s.stop()


async def start_as(stack: Stack, user: str, execution_id: str) -> None:
    command = StartExecution.build(
        execution_id=execution_id,
        user_id=user,
        flow=FLOW,
        flow_version=FLOW.content_hash(),
        credits_reserved=1,
    )
    await stack.publish(topics.EXECUTION_COMMANDS, execution_id, command)


async def test_each_partition_keeps_its_share_and_tenants_take_turns(stack: Stack) -> None:
    partitions = stack.kafka.partitions
    # per partition: four of tenant A's, then one of tenant B's, all at once
    by_partition: dict[int, list[tuple[str, str]]] = defaultdict(list)
    n = 0
    while any(len(by_partition[p]) < 5 for p in range(partitions)):
        eid = f"cap-{os.urandom(4).hex()}-{n}"
        n += 1
        p = partition_for(eid, partitions)
        if len(by_partition[p]) < 5:
            by_partition[p].append(("A" if len(by_partition[p]) < 4 else "B", eid))
    for p in range(partitions):
        for user, eid in by_partition[p]:
            await start_as(stack, user, eid)
    everything = [eid for rows in by_partition.values() for _, eid in rows]
    for eid in everything:
        assert isinstance(await stack.terminal(eid, timeout=90), ExecutionCompleted), eid

    def at(eid: str, cls: type[Any]) -> Any:
        (event,) = stack.of_type(eid, cls)
        return event.occurred_at

    for p, rows in by_partition.items():
        # never two of the partition's tasks out at once: its share of 2 over 2 partitions
        spans = sorted((at(e, NodeDispatched), at(e, NodeCompleted)) for _, e in rows)
        for (_, done), (nxt, _) in zip(spans, spans[1:], strict=False):
            assert nxt >= done, (p, spans)
        waited = [e for _, e in rows if stack.of_type(e, NodeWaitingAgent)]
        assert len(waited) >= 3, (p, waited)  # one went at once; the rest stood in line
        assert {w.data.reason for e in waited for w in stack.of_type(e, NodeWaitingAgent)} == {
            "capacity"
        }
        # B arrived last but is not served last: it is handed the slot after at most one
        # more of A's (the line alternates A, B, A, ...)
        order = [e for _, e in sorted((at(e, NodeDispatched), e) for _, e in rows)]
        b_eid = rows[-1][1]
        assert order.index(b_eid) <= 2, (p, order)
