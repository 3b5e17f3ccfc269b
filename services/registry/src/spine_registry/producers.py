"""The registry's transactions: one transactional producer per input partition it owns.

What a command causes — the agent's entry, its audit record, the gateway's answer, a dead
letter — is written in one Kafka transaction, so ``spine.audit`` never holds a change
that is not in the catalogue, nor the catalogue one that is not audited. Consumption stays
at least once: offsets are committed after the transaction, and a command read again is
recognised among the entries' causes (:class:`~spine_registry.domain.Catalog`).

Why a producer per partition (``transactional_id = <prefix>registry-<p>``), as in
:mod:`spine_servicekit.txloop`: the id must be the same for whoever owns *p* next — a
restarted process, or another replica after a rebalance — because starting a producer
with it fences the previous one and ends its open transaction at once. With an id per
process, a registry killed mid-transaction would hold back every read_committed reader of
the partitions it wrote (the catalogue, the audit, the gateway's replies) until the
broker's transaction timeout.

Whoever starts *p*'s producer then reloads the entries of *p*'s agents from the log
(complete by then) and reads *p* from its committed offsets: a replica that takes a
partition over decides on the catalogue the previous owner left, so an agent id a user
registered a moment ago on another replica is still theirs. The same reset follows a
failed transaction (the decisions it carried are forgotten and made again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from spine_servicekit.kafka import KafkaConfig, Outgoing, make_producer, send_all
from spine_servicekit.logging import get_logger

log = get_logger(__name__)

#: Reload the catalogue entries of the agents of these partitions from the log.
Reload = Callable[[set[int]], Awaitable[None]]
MAX_BACKOFF_S = 5.0
TRANSACTION_TIMEOUT_S = 30.0


class PartitionProducers(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Transactional producers for the partition numbers the consumer is assigned.

    The rebalance callbacks only record what changed (aiokafka sends no heartbeats while
    they run); :meth:`prepare`, called by the consuming loop, starts producers and reloads
    state. Hold :attr:`lock` while deciding and producing, so a revocation waits for it.
    """

    def __init__(self, cfg: KafkaConfig, consumer: AIOKafkaConsumer, reload: Reload) -> None:
        self._cfg = cfg
        self._consumer = consumer
        self._reload = reload
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._due: dict[int, float] = {}  # assigned, not ready: partition -> when to start
        self._failures: dict[int, int] = {}
        self.lock = asyncio.Lock()

    def transactional_id(self, partition: int) -> str:
        return f"{self._cfg.prefix}registry-{partition}"

    @property
    def ready(self) -> set[int]:
        """Partition numbers whose inputs are decided here now."""
        return set(self._producers)

    # -- rebalance listener ----------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self.lock:  # the batch in flight finishes first
            for p in {tp.partition for tp in revoked}:
                self._due.pop(p, None)
                await self._drop(p)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        tps = list(assigned)
        for p in {tp.partition for tp in tps}:
            if p not in self._producers:
                self._due.setdefault(p, 0.0)
        if tps:
            self._consumer.pause(*tps)  # until prepare() has the partition ready

    # -- the loop's side -------------------------------------------------------------------

    async def prepare(self) -> None:
        """Make the partitions that are due ready: start their producers (which fences the
        previous owner's), reload their agents, read them from the committed offsets."""
        now = time.monotonic()
        due = {p for p, at in self._due.items() if at <= now}
        if not due:
            return
        async with self.lock:
            due &= set(self._due)  # a revocation may have come in between
            started: set[int] = set()
            try:
                for p in sorted(due):
                    producer = make_producer(self._cfg, transactional_id=self.transactional_id(p))
                    try:
                        await producer.start()
                    except BaseException:
                        await _close(producer)
                        raise
                    self._producers[p] = producer
                    started.add(p)
                await self._reload(due)
                for p in sorted(due):
                    await self._rewind(p)
            except (KafkaError, OSError, TimeoutError) as exc:
                for p in started:
                    await self._drop(p)
                self._retry_later(due, exc)
                return
            for p in due:
                self._due.pop(p, None)
                self._failures.pop(p, None)
            log.info("registry_partitions_ready", partitions=sorted(due))

    async def transact(self, partition: int, outgoing: Sequence[Outgoing]) -> bool:
        """Produce ``outgoing`` in one transaction of ``partition``'s producer; on failure
        the partition is reset (dropped now, prepared again after a back-off)."""
        producer = self._producers.get(partition)
        if producer is None:
            return False
        try:
            async with asyncio.timeout(TRANSACTION_TIMEOUT_S):
                await producer.begin_transaction()
                await send_all(producer, outgoing)
                await producer.commit_transaction()
        except Exception as exc:  # reset, never lost: the inputs are read and decided again
            await self._drop(partition)
            self._retry_later({partition}, exc)
            return False
        return True

    async def stop(self) -> None:
        async with self.lock:
            self._due.clear()
            for p in list(self._producers):
                await self._drop(p)

    # -- helpers ---------------------------------------------------------------------------

    async def _rewind(self, partition: int) -> None:
        """Read ``partition`` of every input topic again from its committed offset."""
        tps = [tp for tp in self._consumer.assignment() if tp.partition == partition]
        for tp in tps:
            committed = await self._consumer.committed(tp)
            if committed is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)
        if tps:
            self._consumer.resume(*tps)

    def _retry_later(self, partitions: set[int], error: BaseException) -> None:
        tps = [tp for tp in self._consumer.assignment() if tp.partition in partitions]
        if tps:
            self._consumer.pause(*tps)
        for p in partitions:
            failures = self._failures.get(p, 0) + 1
            self._failures[p] = failures
            delay = min(MAX_BACKOFF_S, 0.1 * 2 ** min(failures, 10))
            self._due[p] = time.monotonic() + delay
        log.warning(
            "registry_partition_reset",
            partitions=sorted(partitions),
            error_type=type(error).__name__,
            error=str(error)[:500],
        )

    async def _drop(self, partition: int) -> None:
        producer = self._producers.pop(partition, None)
        if producer is not None:
            # an open transaction is aborted by the next producer with this id
            await _close(producer)


async def _close(producer: AIOKafkaProducer) -> None:
    try:
        async with asyncio.timeout(10):
            await producer.stop()
    except Exception as exc:  # a fenced or dead producer may fail to stop; discarded anyway
        log.debug("registry_producer_stop_failed", error_type=type(exc).__name__)
