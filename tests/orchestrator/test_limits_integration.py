"""Results too large for one Kafka message, on the real broker with the orchestrator's real
loop and handler and a real SDK agent (issue 18).

An input of ~600 KB, well under the gateway's limit, echoed by its first node: the next
node's task would carry the input and the echo, ~1.2 MB. Before, the orchestrator's
transaction failed with ``MessageSizeTooLargeError``, the partition was reset (every
execution on it stalled), the result was dead-lettered and the node timed out. Now the node
fails at once with an error naming the size and the limit, and the other executions of the
partition go on; nothing is aborted, reset or dead-lettered. A result too large for any
message is replaced by the agent SDK with an error result that says so.
"""

from __future__ import annotations

from typing import Any

import pytest
from crash.helpers import orchestrator_loop, start_execution
from spine_agent import Agent, AgentInfo, Task
from spine_agent.testing import TopicReader, publish, serving
from spine_contracts import (
    AgentResult,
    ExecutionCompleted,
    ExecutionFailed,
    FlowDefinition,
    FlowNode,
    Message,
    NodeFailed,
    topics,
)
from spine_kafka.clients import key_partitioner
from spine_servicekit.kafka import KafkaConfig
from support import fresh_topics, read_to_end, signer_of

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

AGENT = "bulky"
FLOW = FlowDefinition(
    flow_id="bulky",
    nodes=(
        FlowNode(id="first", agent_id=AGENT),
        FlowNode(id="second", agent_id=AGENT, depends_on=("first",)),
    ),
)
LIMIT = 1_048_576 - 2048  # KafkaConfig.max_value_bytes of the default setting


def bulky_agent() -> Agent:
    agent = Agent(AgentInfo(agent_id=AGENT), concurrency=8, drain_timeout=10)

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        if task.input.get("huge"):
            return {"blob": "y" * 1_100_000}  # over any one message
        return {"echo": task.input}  # the agent: the input, returned

    return agent


def same_partition(cfg: KafkaConfig, first: str, count: int) -> list[str]:
    """``count`` execution ids on the partition of ``first``."""
    partitions = list(range(cfg.partitions))

    def partition(key: str) -> int:
        return key_partitioner(key.encode(), partitions, partitions)

    ids = (f"{first}-peer-{i}" for i in range(10_000))
    return [i for i in ids if partition(i) == partition(first)][:count]


def finished(execution_ids: set[str]) -> Any:
    return lambda m: (
        isinstance(m, ExecutionCompleted | ExecutionFailed) and m.data.execution_id in execution_ids
    )


async def test_a_result_too_large_fails_its_node_at_once_and_spares_the_partition(
    kafka: KafkaConfig,
) -> None:
    cfg = await fresh_topics(kafka, agents=[AGENT])
    echoed = "ov-echo"
    huge = "ov-huge"
    peers = same_partition(cfg, echoed, 4)
    starts: list[tuple[str, Message]] = [
        (echoed, start_execution(echoed, FLOW, text="x" * 600_000)),
        (huge, start_execution(huge, FLOW, huge=True)),
        *((p, start_execution(p, FLOW, n=i)) for i, p in enumerate(peers)),
    ]
    wanted = {echoed, huge, *peers}
    async with (
        orchestrator_loop(cfg, agents=[AGENT]) as loop,
        serving(bulky_agent(), cfg, signer=signer_of(AGENT)),
        TopicReader(cfg, cfg.topic(topics.EXECUTION_EVENTS)) as events,
    ):
        await publish(cfg, cfg.topic(topics.EXECUTION_COMMANDS), starts)
        done = await events.wait_for(finished(wanted), len(wanted), within=60)
        stats = loop.stats

    by_id = {m.data.execution_id: m for m in done}  # type: ignore[attr-defined]
    # the other executions of the partition were not held up: they all complete
    assert all(isinstance(by_id[p], ExecutionCompleted) for p in peers), by_id

    # the echo would make the next task ~1.2 MB: its node fails at once, saying so
    failure = by_id[echoed]
    assert isinstance(failure, ExecutionFailed)
    [node_failed] = [
        m
        for m in events.matching(lambda m: isinstance(m, NodeFailed))
        if m.data.execution_id == echoed  # type: ignore[attr-defined]
    ]
    assert isinstance(node_failed, NodeFailed)
    assert node_failed.data.node_id == "first" and not node_failed.data.will_retry
    error = node_failed.data.error_message
    assert error.startswith("result of 600,"), error
    assert " bytes does not fit: the task for node 'second' would be 1,2" in error
    assert error.endswith(f"bytes, over the {LIMIT:,}-byte message limit"), error
    assert failure.data.error_message == f"node 'first' failed: {error}"

    # a result over any message: the SDK sent an error result naming its size and the limit
    too_big = by_id[huge]
    assert isinstance(too_big, ExecutionFailed)
    assert too_big.data.error_message.startswith("node 'first' failed: result of 1,100,")
    assert too_big.data.error_message.endswith(f"bytes exceeds the {LIMIT:,}-byte message limit")

    # nothing aborted, reset or dead-lettered: each partition was set up once, that is all
    assert stats.failed == 0 and stats.dead_letters == 0 and stats.skipped == 0, stats
    assert stats.resets == cfg.partitions, stats
    assert await read_to_end(cfg, topics.DEADLETTER) == []
    results = await read_to_end(cfg, topics.AGENT_RESULTS)
    errors = [r for r in results if isinstance(r, AgentResult) and r.data.status == "error"]
    assert [r.data.execution_id for r in errors] == [huge]
