"""Test helpers for agents on a real broker: build and publish tasks, read a topic.

::

    async with TopicReader(cfg, cfg.topic(topics.AGENT_RESULTS)) as results:
        await publish_tasks(cfg, "echo", task_message("echo", input={"x": 1}))
        [result] = await results.wait_for(lambda m: m.data.execution_id == eid, within=15)

No sleeps: :meth:`TopicReader.wait_for` polls the topic until enough messages match or
the timeout passes (``TimeoutError``, listing what it saw).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from spine_contracts import AgentMessage, ContractError, Message, parse
from spine_contracts.metering import TokenBudget
from spine_contracts.signing import Signer
from spine_kafka.clients import (
    KafkaConfig,
    Outgoing,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
)

from .agent import Agent


def task_message(
    agent_id: str,
    *,
    execution_id: str | None = None,
    node_id: str = "node",
    attempt: int = 1,
    input: Mapping[str, Any] | None = None,  # noqa: A002 - the payload's name
    dependencies: Mapping[str, Any] | None = None,
    conversation: Sequence[Mapping[str, Any]] = (),
    config: Mapping[str, Any] | None = None,
    node_type: str = "processor",
    deadline: datetime | None = None,
    correlation_id: str | None = None,
    tenant_id: str | None = None,
    trace: str | None = None,
    budget: TokenBudget | None = None,
) -> AgentMessage:
    """An ``AgentMessage`` shaped like the orchestrator's."""
    return AgentMessage.build(
        correlation_id=correlation_id,
        tenant_id=tenant_id,
        trace=trace,
        execution_id=execution_id or f"exec-{uuid.uuid4().hex[:12]}",
        node_id=node_id,
        attempt=attempt,
        to_agent=agent_id,
        payload={
            "input": dict(input or {}),
            "dependencies": dict(dependencies or {}),
            "conversation": [dict(t) for t in conversation],
            "node_type": node_type,
        },
        config=dict(config or {}),
        deadline=deadline,
        budget=budget,
    )


async def publish(
    cfg: KafkaConfig,
    topic: str,
    items: Iterable[tuple[str, Message]],
    *,
    transactional: bool = False,
) -> None:
    """Publish ``(key, message)`` pairs in order; in one transaction when asked."""
    producer = make_producer(
        cfg, transactional_id=f"test-{uuid.uuid4().hex}" if transactional else None
    )
    await producer.start()
    try:
        if transactional:
            await producer.begin_transaction()
        futures = []
        for key, message in items:
            k, value, headers = Outgoing(topic, key, message).encode()
            futures.append(await producer.send(topic, value=value, key=k, headers=headers))
        if transactional:
            await producer.commit_transaction()
        for fut in futures:
            await fut
    finally:
        await producer.stop()


async def publish_tasks(
    cfg: KafkaConfig, agent_id: str, *messages: Message, transactional: bool = False
) -> None:
    """Publish tasks (or cancels) to an agent's tasks topic, keyed by execution_id."""
    items = [(str(getattr(m.data, "execution_id")), m) for m in messages]  # noqa: B009
    await publish(cfg, cfg.agent_tasks(agent_id), items, transactional=transactional)


@dataclass(frozen=True)
class Seen:
    """A message read from the topic, with where it was."""

    partition: int
    offset: int
    key: str | None
    message: Message


class TopicReader:
    """Reads one topic from its beginning (no consumer group) and keeps what it saw."""

    def __init__(self, cfg: KafkaConfig, topic: str) -> None:
        self.cfg = cfg
        self.topic = topic
        self.seen: list[Seen] = []
        self.undecodable = 0
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicReader:
        self._consumer = make_consumer(self.cfg, self.topic, group_id=None)
        await self._consumer.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def poll(self, timeout_ms: int = 100) -> None:
        assert self._consumer is not None, "use `async with TopicReader(...)`"
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        for records in batch.values():
            for record in records:
                try:
                    message = parse(record.value or b"")
                except ContractError:
                    self.undecodable += 1
                    continue
                key = bytes(record.key).decode() if record.key is not None else None
                self.seen.append(Seen(record.partition, record.offset, key, message))

    def matching(self, predicate: Callable[[Message], bool]) -> list[Message]:
        return [s.message for s in self.seen if predicate(s.message)]

    async def wait_for(
        self,
        predicate: Callable[[Message], bool],
        count: int = 1,
        *,
        within: float = 15.0,
    ) -> list[Message]:
        """Poll until ``count`` messages match; return every match so far."""
        try:
            async with asyncio.timeout(within):
                while True:
                    found = self.matching(predicate)
                    if len(found) >= count:
                        return found
                    await self.poll()
        except TimeoutError:
            found = self.matching(predicate)
            raise TimeoutError(
                f"{self.topic}: {len(found)} of {count} expected messages within {within}s "
                f"(saw {len(self.seen)}: {[s.message.type for s in self.seen][-20:]})"
            ) from None


@contextlib.asynccontextmanager
async def serving(agent: Agent, cfg: KafkaConfig, **options: Any) -> AsyncIterator[Agent]:
    """Run ``agent.serve`` in the background for the block, then stop it and wait.

    ``options`` go to :meth:`Agent.serve` (``heartbeat_interval``, ``concurrency``,
    ``signer``...). An agent with neither a signer nor a ``signing_key_file`` signs with a
    throwaway key: enough where nothing checks it (the agent's own tests); where the
    orchestrator or the registry reads the messages, issue the agent (``spine-admin``) and
    hand its key in. The agent's tasks topic is made first, as issuing it would (with
    ``cfg``'s login). A crash of the agent surfaces when the block ends.
    """
    if agent.signer is None and not options.get("signer") and not options.get("signing_key_file"):
        options["signer"] = Signer.generate()
    # what issuing the agent makes: on a secured broker the SDK creates no topic itself
    await ensure_topics(cfg, specs=(), agent_ids=[agent.agent_id])
    stopping = asyncio.Event()
    task = asyncio.create_task(agent.serve(cfg, stopping, **options))
    try:
        yield agent
    finally:
        stopping.set()
        async with asyncio.timeout(60):
            await task


async def group_offsets(
    cfg: KafkaConfig, group_id: str, topic: str
) -> tuple[dict[int, int | None], dict[int, int]]:
    """``(committed, end)`` offsets per partition of ``topic`` for the consumer group."""
    admin = make_admin(cfg)
    await admin.start()
    try:
        raw = await admin.list_consumer_group_offsets(group_id)
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = sorted(p["partition"] for p in described.get("partitions", ()))
    if not partitions:
        raise LookupError(f"topic {topic} has no partitions (does it exist?)")
    consumer = make_consumer(cfg, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        await consumer.stop()
    committed: dict[int, int | None] = {p: None for p in partitions}
    for tp, meta in raw.items():
        if tp.topic == topic and meta.offset >= 0:
            committed[tp.partition] = meta.offset
    return committed, {tp.partition: offset for tp, offset in ends.items()}


async def wait_caught_up(
    cfg: KafkaConfig, group_id: str, topic: str, *, within: float = 15.0
) -> dict[int, int]:
    """Wait until the group's committed offsets equal the topic's end offsets."""
    committed: dict[int, int | None] = {}
    ends: dict[int, int] = {}
    try:
        async with asyncio.timeout(within):
            while True:
                committed, ends = await group_offsets(cfg, group_id, topic)
                if all(committed[p] == end for p, end in ends.items() if end > 0):
                    return ends
                await asyncio.sleep(0.1)  # the broker has no "committed" notification
    except TimeoutError:
        raise TimeoutError(
            f"group {group_id} on {topic}: committed {committed} != end {ends} after {within}s"
        ) from None
