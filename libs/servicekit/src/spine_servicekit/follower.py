"""Follow a topic on every partition without a consumer group (in-memory views).

Used for what each replica must see whole: the agent catalogue (from the beginning of a
compacted topic), the replies and execution events a gateway waits for (from the end).
``caught_up`` is set once the records that existed at start have been applied.

Poison: a record that does not decode, whose type its topic does not carry, or that
``apply`` raises on is logged with its origin and skipped; the follower goes on. Whether
it is also dead-lettered depends on the topic (``dead_letters``):

* most followed topics are also read by a consumer that dead-letters: the projector of
  their service's read model (``spine.registry.events``, ``spine.flows``,
  ``spine.executions.events``, ``spine.auth.events``). A follower is a pure view of such
  a topic and only logs, or every replica would dead-letter the same record again;
* a topic that only followers read (``spine.gateway.replies``,
  ``spine.services.heartbeats``) is dead-lettered by the follower itself. Every replica
  reads every partition, so each may send the letter: its ``message_id`` is
  deterministic (:func:`~spine_servicekit.kafka.dead_letter_id` of the follower's
  ``name`` and the origin), the same from every replica, and ``owns`` can narrow who
  sends it (e.g. only the replica a reply is addressed to).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from spine_contracts import ContractError, Message
from spine_kafka.clients import (
    KafkaConfig,
    dead_letter,
    dead_letter_outgoing,
    decode_record,
    make_consumer,
    make_producer,
    partitions_of,
    problem_fields,
    send_all,
)
from spine_kafka.logging import get_logger

log = get_logger(__name__)

Apply = Callable[[Message, ConsumerRecord[Any, Any]], Awaitable[None] | None]
Owns = Callable[[ConsumerRecord[Any, Any]], bool]


@dataclass
class FollowerStats:
    applied: int = 0
    poison: int = 0
    dead_letters: int = 0


class TopicFollower:
    def __init__(
        self,
        cfg: KafkaConfig,
        topic: str,
        apply: Apply,
        *,
        start: Literal["beginning", "end"] = "beginning",
        name: str = "follower",
        dead_letters: bool = False,
        owns: Owns | None = None,
    ) -> None:
        self._cfg = cfg
        self._topic = topic
        self._apply = apply
        self._start = start
        self._name = name
        self._dead_letters = dead_letters
        self._owns = owns
        self.caught_up = asyncio.Event()
        self.stats = FollowerStats()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None

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

    async def wait_caught_up(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109
        await asyncio.wait_for(self.caught_up.wait(), timeout)

    async def _run(self, consumer: Any, tps: list[TopicPartition], ends: dict[Any, int]) -> None:
        try:
            pending = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
            if not pending:
                self.caught_up.set()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
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
            return  # a compaction tombstone
        try:
            message = decode_record(record, self._cfg.prefix)
        except ContractError as exc:
            await self._poison(record, exc)
            return
        try:
            result = self._apply(message, record)
            if result is not None:
                await result
        except Exception as exc:  # the view cannot take it: a dead letter, never a dead view
            await self._poison(record, exc)
            return
        self.stats.applied += 1

    async def _poison(self, record: ConsumerRecord[Any, Any], error: BaseException) -> None:
        self.stats.poison += 1
        send = self._dead_letters and (self._owns is None or self._owns(record))
        log.warning(
            "follower_poison",
            follower=self._name,
            **problem_fields(record, error),
            dead_letter=send,
        )
        if not send:
            return
        letter = dead_letter(record, error, consumer=self._name)
        try:
            if self._producer is None:  # poison is rare: connect when the first one comes
                producer = make_producer(self._cfg)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            await send_all(self._producer, [dead_letter_outgoing(self._cfg, letter)])
        except KafkaError as exc:  # the view goes on; the record stays on its topic
            log.error("follower_dead_letter_failed", follower=self._name, error=repr(exc))
            return
        self.stats.dead_letters += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()
