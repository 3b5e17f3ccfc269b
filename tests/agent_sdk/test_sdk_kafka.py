"""The SDK on the real broker: an agent served in-process, tasks published like the
orchestrator does (transactionally), results awaited on the results topic.

Every test uses its own agent id (own tasks topic and consumer group) and its own
execution ids, so tests of the module share the module's topic prefix without seeing
each other's work.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition
from spine_agent import Agent, AgentInfo, NeedsInput, Task
from spine_agent.testing import (
    TopicReader,
    group_offsets,
    publish,
    publish_tasks,
    serving,
    task_message,
    wait_caught_up,
)
from spine_contracts import (
    AgentCancel,
    AgentHeartbeat,
    AgentResult,
    DeadLetter,
    RegisterAgent,
    topics,
    utcnow,
)
from spine_servicekit.kafka import KafkaConfig, make_producer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _agent(agent_id: str, concurrency: int = 32) -> Agent:
    return Agent(
        AgentInfo(agent_id=agent_id, name=agent_id, capabilities=("testing",)),
        concurrency=concurrency,
        drain_timeout=10,
    )


def _results_for(*execution_ids: str) -> Any:
    wanted = set(execution_ids)
    return lambda m: isinstance(m, AgentResult) and m.data.execution_id in wanted


async def test_outcomes_registration_heartbeats_and_commits(kafka: KafkaConfig) -> None:
    agent = _agent("sdk-basic")

    @agent.handler
    async def handle(task: Task) -> Any:
        mode = task.config["mode"]
        if mode == "ok":
            return {"echo": task.input, "key": task.idempotency_key}
        if mode == "raise":
            raise ValueError("boom")
        if mode == "ask":
            return NeedsInput("What is your income?", ["income"])
        if mode == "raise-ask":
            raise NeedsInput("And the amount?", ["amount"])
        if mode == "set":
            return {"bad": {1, 2}}
        return None

    modes = ["ok", "raise", "ask", "raise-ask", "set", "none"]
    tasks = {
        mode: task_message(
            "sdk-basic",
            node_id=mode,
            input={"mode": mode},
            config={"mode": mode},
            correlation_id=f"corr-{mode}",
            tenant_id="user-1",
            trace=TRACE,
        )
        for mode in modes
    }
    expired = task_message(
        "sdk-basic", config={"mode": "ok"}, deadline=utcnow() - timedelta(seconds=1)
    )
    ids = [t.data.execution_id for t in tasks.values()]
    tasks_topic = kafka.agent_tasks("sdk-basic")

    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        TopicReader(kafka, kafka.topic(topics.REGISTRY_COMMANDS)) as commands,
        TopicReader(kafka, kafka.topic(topics.REGISTRY_HEARTBEATS)) as beats,
        TopicReader(kafka, kafka.topic(topics.DEADLETTER)) as letters,
    ):
        async with serving(agent, kafka, heartbeat_interval=0.2):
            [register] = await commands.wait_for(
                lambda m: isinstance(m, RegisterAgent) and m.data.agent.agent_id == "sdk-basic"
            )
            await publish_tasks(kafka, "sdk-basic", expired, *tasks.values(), transactional=True)
            await _publish_garbage(kafka, tasks_topic)
            found = await results.wait_for(_results_for(*ids), count=len(modes))
            await beats.wait_for(
                lambda m: (
                    isinstance(m, AgentHeartbeat)
                    and m.data.ready
                    and m.data.agent_id == "sdk-basic"
                ),
                count=2,
            )
            await wait_caught_up(kafka, agent.group_id(kafka), tasks_topic)  # past the garbage
        # on the secured broker an agent writes no dead letter (its ACLs hold no WRITE on
        # spine.deadletter): the undecodable task is logged, counted and committed past
        assert kafka.security.sasl
        assert not letters.matching(
            lambda m: isinstance(m, DeadLetter) and m.data.origin_topic == tasks_topic
        )
        # after the stop: a last beat that says "not ready"
        await beats.wait_for(
            lambda m: (
                isinstance(m, AgentHeartbeat)
                and m.data.agent_id == "sdk-basic"
                and not m.data.ready
            )
        )
    stats = agent.stats

    assert isinstance(register, RegisterAgent)
    assert register.data.agent.transport == "kafka"
    assert register.data.agent.capabilities == ("testing",)

    by_node = {m.data.node_id: m for m in found if isinstance(m, AgentResult)}
    assert set(by_node) == set(modes)
    ok = by_node["ok"]
    assert ok.data.status == "success"
    assert ok.data.output == {"echo": {"mode": "ok"}, "key": f"{ok.data.execution_id}:ok:1"}
    assert by_node["raise"].data.status == "error"
    assert by_node["raise"].data.error_message == "ValueError: boom"
    for node, field in (("ask", "income"), ("raise-ask", "amount")):
        assert by_node[node].data.status == "needs_input"
        assert by_node[node].data.missing_fields == (field,)
        assert by_node[node].data.question
    for node in ("set", "none"):
        assert by_node[node].data.status == "error"
        assert (by_node[node].data.error_message or "").startswith("InvalidOutput: ")
    for mode, result in by_node.items():
        task = tasks[mode]
        assert result.causation_id == str(task.message_id)
        assert result.correlation_id == f"corr-{mode}"
        assert result.tenant_id == "user-1"
        assert result.trace == TRACE
        assert result.data.agent_id == "sdk-basic"
        assert result.data.metrics["duration_ms"] >= 0
    keyed = {s.key for s in results.seen if isinstance(s.message, AgentResult)}
    assert set(ids) <= keyed  # results are keyed by execution_id

    # the expired task was acknowledged without running: no result, counted
    assert not results.matching(_results_for(expired.data.execution_id))
    assert stats.expired == 1
    assert stats.dead_letters == 1
    assert (stats.succeeded, stats.failed, stats.needs_input) == (1, 3, 2)

    heartbeats = [s for s in beats.seen if isinstance(s.message, AgentHeartbeat)]
    assert {h.key for h in heartbeats} == {"sdk-basic"}
    assert all(h.message.data.transport == "kafka" for h in heartbeats)  # type: ignore[attr-defined]


async def _publish_garbage(cfg: KafkaConfig, topic: str) -> None:
    producer = make_producer(cfg)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{not json", key=b"garbage")
    finally:
        await producer.stop()


async def test_tasks_run_concurrently(kafka: KafkaConfig) -> None:
    agent = _agent("sdk-conc", concurrency=16)
    spans: dict[str, tuple[float, float]] = {}

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        start = time.monotonic()
        await asyncio.sleep(0.3)
        spans[task.execution_id] = (start, time.monotonic())
        return {}

    messages = [task_message("sdk-conc") for _ in range(10)]
    ids = [m.data.execution_id for m in messages]
    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        serving(agent, kafka),
    ):
        await publish_tasks(kafka, "sdk-conc", *messages, transactional=True)
        found = await results.wait_for(_results_for(*ids), count=10)

    assert {m.data.status for m in found if isinstance(m, AgentResult)} == {"success"}
    assert len(spans) == 10
    assert _max_overlap(spans.values()) > 1
    assert agent.stats.max_in_flight > 1


def _max_overlap(spans: Any) -> int:
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    current = best = 0
    for _, delta in edges:
        current += delta
        best = max(best, current)
    return best


async def test_slow_task_holds_back_commits_not_later_tasks(kafka: KafkaConfig) -> None:
    agent = _agent("sdk-slow")
    release = asyncio.Event()

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        if task.config.get("slow"):
            async with asyncio.timeout(30):
                await release.wait()
        return {"node": task.node_id}

    execution_id = f"exec-{uuid.uuid4().hex[:8]}"  # one key: one partition, in this order
    slow = task_message("sdk-slow", execution_id=execution_id, node_id="slow", config={"slow": 1})
    quick = [
        task_message("sdk-slow", execution_id=execution_id, node_id=f"quick-{i}") for i in range(20)
    ]
    topic = kafka.agent_tasks("sdk-slow")
    group = agent.group_id(kafka)
    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        serving(agent, kafka),
    ):
        await publish_tasks(kafka, "sdk-slow", slow, *quick, transactional=True)
        await results.wait_for(_results_for(execution_id), count=20)
        # Everything after the slow task is done, yet the commit stops right at it.
        slow_offset = await _offset_of(kafka, topic, slow.message_id)
        await _wait_committed(kafka, group, topic, slow_offset)
        release.set()
        found = await results.wait_for(_results_for(execution_id), count=21)
        await wait_caught_up(kafka, group, topic)

    order = [m.data.node_id for m in found if isinstance(m, AgentResult)]
    assert order[-1] == "slow"
    assert sorted(order[:-1]) == sorted(f"quick-{i}" for i in range(20))


async def _offset_of(cfg: KafkaConfig, topic: str, message_id: uuid.UUID) -> tuple[int, int]:
    async with TopicReader(cfg, topic) as reader:
        await reader.wait_for(lambda m: m.message_id == message_id)
        [seen] = [s for s in reader.seen if s.message.message_id == message_id]
        return seen.partition, seen.offset


async def _wait_committed(cfg: KafkaConfig, group: str, topic: str, where: tuple[int, int]) -> None:
    partition, offset = where
    committed: dict[int, int | None] = {}
    async with asyncio.timeout(15):
        while committed.get(partition) != offset:
            committed, _ = await group_offsets(cfg, group, topic)
            assert (committed.get(partition) or 0) <= offset, "committed past an unfinished task"
            await asyncio.sleep(0.05)  # polling the broker's committed offset


async def test_saturation_bounds_in_flight_and_keeps_polling(kafka: KafkaConfig) -> None:
    agent = _agent("sdk-sat", concurrency=2)
    gate = asyncio.Event()
    started = asyncio.Queue[str]()

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        started.put_nowait(task.execution_id)
        async with asyncio.timeout(30):
            await gate.wait()
        return {}

    messages = [task_message("sdk-sat") for _ in range(6)]
    ids = [m.data.execution_id for m in messages]
    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        TopicReader(kafka, kafka.topic(topics.REGISTRY_HEARTBEATS)) as beats,
        serving(agent, kafka, heartbeat_interval=0.2),
    ):
        await publish_tasks(kafka, "sdk-sat", *messages)
        async with asyncio.timeout(15):
            await started.get()
            await started.get()
        # Saturated: heartbeats report two in flight, and no third task starts meanwhile.
        await beats.wait_for(
            lambda m: (
                isinstance(m, AgentHeartbeat)
                and m.data.agent_id == "sdk-sat"
                and m.data.in_flight == 2
            ),
            count=3,
        )
        assert started.empty()
        assert agent.in_flight == 2
        gate.set()
        await results.wait_for(_results_for(*ids), count=6)
        await wait_caught_up(kafka, agent.group_id(kafka), kafka.agent_tasks("sdk-sat"))
    assert agent.stats.max_in_flight == 2
    assert agent.stats.succeeded == 6


async def test_cancel_stops_the_running_handler_without_a_result(kafka: KafkaConfig) -> None:
    agent = _agent("sdk-cancel")
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        if task.node_id == "long":
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return {"node": task.node_id}

    execution_id = f"exec-{uuid.uuid4().hex[:8]}"
    long = task_message("sdk-cancel", execution_id=execution_id, node_id="long")
    after = task_message("sdk-cancel", execution_id=execution_id, node_id="after")
    cancel = AgentCancel.build(execution_id=execution_id, node_id="long", reason="test")
    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        serving(agent, kafka),
    ):
        await publish_tasks(kafka, "sdk-cancel", long)
        async with asyncio.timeout(15):
            await started.wait()
        await publish_tasks(kafka, "sdk-cancel", cancel, after)
        async with asyncio.timeout(15):
            await cancelled.wait()
        await results.wait_for(lambda m: isinstance(m, AgentResult) and m.data.node_id == "after")
        await wait_caught_up(kafka, agent.group_id(kafka), kafka.agent_tasks("sdk-cancel"))
    assert [m.data.node_id for m in results.matching(_results_for(execution_id))] == ["after"]
    assert agent.stats.cancelled == 1


async def test_a_redelivered_task_is_not_run_twice_by_one_process(kafka: KafkaConfig) -> None:
    agent = _agent("sdk-dup")
    runs: list[str] = []

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        runs.append(task.idempotency_key)
        return {}

    message = task_message("sdk-dup")
    topic = kafka.agent_tasks("sdk-dup")
    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        serving(agent, kafka),
    ):
        await publish_tasks(kafka, "sdk-dup", message)
        await results.wait_for(_results_for(message.data.execution_id))
        # the same message again, as a producer retry or a replay would deliver it
        await publish(kafka, topic, [(message.data.execution_id, message)])
        await wait_caught_up(kafka, agent.group_id(kafka), topic)
    assert runs == [message.data.idempotency_key]
    assert agent.stats.duplicates == 1
    assert len(results.matching(_results_for(message.data.execution_id))) == 1


async def test_partition_offsets_are_committed_per_partition(kafka: KafkaConfig) -> None:
    """Many executions over both partitions: every one answered once, lag 0 after."""
    agent = _agent("sdk-many", concurrency=8)

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        await asyncio.sleep(0.001 * (hash(task.execution_id) % 20))
        return {"n": task.input["n"]}

    messages = [task_message("sdk-many", input={"n": i}) for i in range(200)]
    ids = [m.data.execution_id for m in messages]
    topic = kafka.agent_tasks("sdk-many")
    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        serving(agent, kafka),
    ):
        await publish_tasks(kafka, "sdk-many", *messages, transactional=True)
        found = await results.wait_for(_results_for(*ids), count=200, within=60)
        ends = await wait_caught_up(kafka, agent.group_id(kafka), topic)
    assert sorted(m.data.output["n"] for m in found if isinstance(m, AgentResult)) == list(
        range(200)
    )
    assert len(ends) == kafka.partitions
    committed = agent.stats.committed
    assert {tp.partition: off for tp, off in committed.items()} == ends
    assert all(isinstance(tp, TopicPartition) for tp in committed)


async def test_replicas_share_the_work_and_survive_one_leaving(kafka: KafkaConfig) -> None:
    """Two replicas in one group; one stops half-way. At least once: every task is
    answered (a task may be answered twice around the hand-over), and the group ends
    with nothing uncommitted."""
    ran: dict[str, list[str]] = {"a": [], "b": []}

    def replica(name: str) -> Agent:
        agent = _agent("sdk-pair", concurrency=4)

        @agent.handler
        async def handle(task: Task) -> dict[str, Any]:
            ran[name].append(task.execution_id)
            await asyncio.sleep(0.01)
            return {"by": name}

        return agent

    a, b = replica("a"), replica("b")
    messages = [task_message("sdk-pair", input={"n": i}) for i in range(120)]
    ids = [m.data.execution_id for m in messages]
    topic = kafka.agent_tasks("sdk-pair")
    async with TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results:
        async with serving(b, kafka):
            async with serving(a, kafka):
                await publish_tasks(kafka, "sdk-pair", *messages[:60], transactional=True)
                await results.wait_for(_results_for(*ids[:60]), count=60, within=60)
            # a has drained and left; b takes over its partitions
            await publish_tasks(kafka, "sdk-pair", *messages[60:], transactional=True)
            found = await results.wait_for(_results_for(*ids), count=120, within=60)
            await wait_caught_up(kafka, b.group_id(kafka), topic)
    answered = {m.data.execution_id for m in found if isinstance(m, AgentResult)}
    assert answered == set(ids)
    assert set(ran["a"]) | set(ran["b"]) == set(ids)
    assert ran["b"], "the second replica never got work"
