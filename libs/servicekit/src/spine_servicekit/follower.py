"""Follow a topic on every partition without a consumer group (in-memory views).

Used for what each replica must see whole: the agent catalogue (from the beginning of a
compacted topic), the replies and execution events a gateway waits for (from the end).
``caught_up`` is set once the records that existed at start have been applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiokafka import ConsumerRecord, TopicPartition
from spine_contracts import ContractError, Message, parse

from .kafka import KafkaConfig, make_consumer, partitions_of
from .logging import get_logger

log = get_logger(__name__)

Apply = Callable[[Message, ConsumerRecord[Any, Any]], Awaitable[None] | None]


class TopicFollower:
    def __init__(
        self,
        cfg: KafkaConfig,
        topic: str,
        apply: Apply,
        *,
        start: Literal["beginning", "end"] = "beginning",
        name: str = "follower",
    ) -> None:
        self._cfg = cfg
        self._topic = topic
        self._apply = apply
        self._start = start
        self._name = name
        self.caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        partitions = await partitions_of(self._cfg, self._topic)
        consumer = make_consumer(self._cfg, group_id=None)
        await consumer.start()
        tps = [TopicPartition(self._topic, p) for p in partitions]
        consumer.assign(tps)
        if self._start == "beginning":
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        ends = await consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._run(consumer, tps, ends), name=self._name)

    async def wait_caught_up(self, timeout: float = 60.0) -> None:
        await asyncio.wait_for(self.caught_up.wait(), timeout)

    async def _run(self, consumer: Any, tps: list[TopicPartition], ends: dict[Any, int]) -> None:
        try:
            pending = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
            if not pending:
                self.caught_up.set()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    for record in records:
                        await self._apply_record(record)
                if pending:
                    for tp in list(pending):
                        if await consumer.position(tp) >= ends[tp]:
                            pending.discard(tp)
                    if not pending:
                        self.caught_up.set()
        finally:
            await consumer.stop()

    async def _apply_record(self, record: ConsumerRecord[Any, Any]) -> None:
        if record.value is None:
            return
        try:
            message = parse(record.value)
        except ContractError as exc:
            log.warning(
                "follower_skipped_undecodable",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                error=str(exc),
            )
            return
        result = self._apply(message, record)
        if result is not None:
            await result

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
