"""The transactional consume–decide–produce loop of the orchestrator and auth (docs/guarantees.md).

One consumer in a group reads N co-partitioned input topics (same partition count, key =
entity id); the range assignor gives partition *p* of every input topic to one member. For
each poll, the records are grouped by partition number and every partition runs, concurrently
with the others, one Kafka transaction::

    begin → send every Outgoing (+ dead letters) → send_offsets_to_transaction → commit

aiokafka's ``send_offsets_to_transaction`` carries no KIP-447 group metadata, so zombies are
fenced the classic way: one transactional producer per input partition number, with
``transactional_id = f"{prefix}-{p}"``, created when *p* is assigned. Starting it
(InitProducerId) bumps the epoch, fences any older producer with that id and waits until
that producer's open transaction is aborted or fully committed (markers written).

Invariant that makes the loop exactly-once: **every (re)start of a partition's producer is
followed by rebuilding the handler's state for that partition from the log and seeking the
partition's input topics to the group's committed offsets** (see :meth:`_reset`). Committed
offsets and the read_committed log are then exactly what the previous owner left; anyone
who processes *p* later must start a producer with the same id, which fences this one.

Failures:

* A record that cannot be decoded, or whose type its topic does not carry
  (``ContractError``), becomes a ``DeadLetter`` inside the partition's transaction, with
  the original key and origin; the handler never sees it.
* ``handler.handle`` raising for a batch: its in-memory state may be half-updated, so the
  partition is reset (state rebuilt, input re-read) and the re-read records are handled one
  per transaction; the one that raises again is dead-lettered. :class:`PoisonMessage` says
  "rejected before touching state": no reset is needed after it in one-by-one mode.
* A transaction that fails: the loop aborts, then tells fencing apart from everything else.
  Fenced (another owner took *p*): drop the producer and the state of *p*, pause *p* and
  leave it to the next rebalance. Otherwise: reset *p* (new producer, rebuild, seek), with
  a growing back-off while it keeps failing. A batch that failed with a non-retriable error
  (e.g. an output over the size limit) is re-read one record per transaction; a record
  whose own transaction fails that way is dead-lettered next (``TransactionFailed``; if even
  that fails, it is skipped with its offset committed), so an exception never turns into an
  endless replay. Retriable errors (timeouts, connections) are retried, never dead-lettered.
* A record over the producer's limit (``record_size`` > ``max_message_bytes``) never
  reaches a transaction: it counts as the handler's failure for its batch (above), so the
  input is dead-lettered with a :class:`~spine_kafka.limits.MessageTooLarge` naming the
  size and the limit. A handler that keeps its outputs within the limit itself (the
  orchestrator: docs/limits.md) never gets there; dead letters leave out a payload too
  large to carry.

Rebalances: ``on_partitions_revoked`` waits for the in-flight transactions, then stops the
producers and drops handler state. ``on_partitions_assigned`` only registers and pauses the
new partitions: aiokafka sends no heartbeats while that callback runs, so the (possibly
slow) state rebuild happens in the loop's task, before the next poll.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced
from aiokafka.producer.transaction_manager import TransactionState
from aiokafka.structs import OffsetAndMetadata
from spine_contracts import ContractError, DeadLetter, topics
from spine_kafka import ops, tracing
from spine_kafka.clients import (
    Incoming,
    KafkaConfig,
    Outgoing,
    dead_letter,
    decode_record,
    make_admin,
    make_consumer,
    make_producer,
    send_all,
)
from spine_kafka.limits import MessageTooLarge
from spine_kafka.logging import get_logger

__all__ = [
    "Incoming",
    "LoopStats",
    "PartitionHandler",
    "PoisonMessage",
    "ProducerFactory",
    "TransactionFailed",
    "TransactionalLoop",
]

log = get_logger(__name__)

ProducerFactory = Callable[[str], AIOKafkaProducer]


class PoisonMessage(Exception):
    """Raised by :meth:`PartitionHandler.handle` to reject one input as unhandleable.

    The loop dead-letters that input with this error. Raising it promises that the
    handler's state was not changed by the rejected input, which spares a state rebuild.
    """

    def __init__(self, reason: str, incoming: Incoming | None = None) -> None:
        super().__init__(reason)
        self.incoming = incoming


class PartitionHandler(Protocol):
    """The service's side of the loop: state per input partition and the decisions."""

    async def on_assigned(self, partition: int) -> None:
        """Build the in-memory state for ``partition`` from the log (snapshots, events).

        Called after this partition's transactional producer has started, so every
        transaction of a previous owner is complete and visible to read_committed readers.
        """
        ...

    async def on_revoked(self, partition: int) -> None:
        """Forget the state of ``partition`` (it is revoked, fenced, or about to be rebuilt)."""
        ...

    async def handle(self, partition: int, batch: Sequence[Incoming]) -> Sequence[Outgoing]:
        """Decide: update state and return what to produce. Never produce directly.

        Called with consecutive inputs of one partition number (across the input topics,
        each topic in offset order). Raise :class:`PoisonMessage` to reject an input; any
        other exception is treated as a bug for that input (dead-lettered after a retry
        alone, with the state rebuilt).
        """
        ...


@dataclass
class LoopStats:
    """Counters for tests and metrics; never reset."""

    committed: int = 0
    failed: int = 0
    dead_letters: int = 0
    resets: int = 0
    fenced: int = 0
    skipped: int = 0


@dataclass(eq=False)
class _Slot:
    """Everything the loop keeps for one assigned input partition number."""

    partition: int
    producer: AIOKafkaProducer | None = None
    ready: bool = False
    loaded: bool = False
    fenced: bool = False
    resume_at: float | None = 0.0
    failures: int = 0
    # records up to these offsets are handled one per transaction (after a failed batch)
    one_by_one_until: dict[TopicPartition, int] = field(default_factory=dict)
    # records that failed alone: (topic, offset) -> (failures, last error)
    strikes: dict[tuple[str, int], tuple[int, str]] = field(default_factory=dict)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, loop: TransactionalLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._loop._on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._loop._on_assigned(set(assigned))


class TransactionalLoop:
    """Consume co-partitioned inputs, let a handler decide, commit outputs + offsets atomically.

    Use ``async with loop:`` (starts and runs it in a background task), or ``await
    start()``, then ``await run()`` in a task of your own and ``await stop()`` to finish.

    ``max_batch`` bounds the records of one partition number per transaction (and per
    ``handle`` call); ``poll_timeout_ms`` only bounds how long an idle poll waits, records
    are returned as soon as they arrive. ``transactional_id_prefix`` must be the same on
    every replica of the service and unique to it (e.g. ``"orchestrator"``).
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        *,
        group_id: str,
        input_topics: Sequence[str],
        handler: PartitionHandler,
        transactional_id_prefix: str,
        consumer_name: str,
        max_batch: int = 500,
        poll_timeout_ms: int = 100,
        transaction_timeout_s: float = 30.0,
        max_backoff_s: float = 5.0,
        producer_factory: ProducerFactory | None = None,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not input_topics:
            raise ValueError("at least one input topic is required")
        if max_batch < 1:
            raise ValueError("max_batch must be positive")
        self._cfg = cfg
        self._group_id = group_id
        self._input_topics = tuple(input_topics)
        self._topic_rank = {t: i for i, t in enumerate(self._input_topics)}
        self._handler = handler
        self._txid_prefix = transactional_id_prefix
        self._consumer_name = consumer_name
        self._max_batch = max_batch
        self._poll_timeout_ms = poll_timeout_ms
        self._txn_timeout_s = transaction_timeout_s
        self._max_backoff_s = max_backoff_s
        self._producer_factory: ProducerFactory = producer_factory or (
            lambda txid: make_producer(cfg, transactional_id=txid)
        )
        self._consumer_options = dict(consumer_options or {})
        self._deadletter_topic = cfg.topic(topics.DEADLETTER)

        self._consumer: AIOKafkaConsumer | None = None
        self._slots: dict[int, _Slot] = {}
        self._busy = asyncio.Lock()
        self._stop_requested = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._running = False
        self._run_finished = asyncio.Event()
        self._closed = False
        self.stats = LoopStats()
        self._log = log.bind(consumer=consumer_name, group_id=group_id)

    # -- lifecycle ---------------------------------------------------------------------------

    def transactional_id(self, partition: int) -> str:
        return f"{self._txid_prefix}-{partition}"

    @property
    def ready_partitions(self) -> list[int]:
        """Partition numbers this instance currently processes."""
        return sorted(p for p, s in self._slots.items() if s.ready)

    @property
    def fenced_partitions(self) -> list[int]:
        """Partition numbers stopped because another producer took them over."""
        return sorted(p for p, s in self._slots.items() if s.fenced)

    async def start(self) -> None:
        """Connect, check co-partitioning and subscribe; the group join completes in run()."""
        if self._consumer is not None:
            raise RuntimeError("loop already started")
        await self._check_co_partitioned()
        options = {"max_poll_records": self._max_batch, **self._consumer_options}
        consumer = make_consumer(self._cfg, group_id=self._group_id, **options)
        self._consumer = consumer
        await consumer.start()
        consumer.subscribe(list(self._input_topics), listener=_Listener(self))
        self._log.info("txloop_started", input_topics=list(self._input_topics))

    async def run(self) -> None:
        """Process until :meth:`stop`; the in-flight transactions finish before it returns."""
        consumer = self._require_consumer()
        self._running = True
        self._run_finished.clear()
        stop_wait = asyncio.ensure_future(self._stop_requested.wait())
        try:
            while not self._stop_requested.is_set():
                await self._maintain()
                fetch = asyncio.ensure_future(
                    consumer.getmany(timeout_ms=self._poll_timeout_ms, max_records=self._max_batch)
                )
                await asyncio.wait({fetch, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    await asyncio.gather(fetch, return_exceptions=True)
                    break
                records = fetch.result()
                if records:
                    await self._process(await self._top_up(consumer, records))
        except Exception as exc:
            self._log.error("txloop_failed", error_type=type(exc).__name__, exc_info=True)
            raise
        finally:
            stop_wait.cancel()
            self._running = False
            self._run_finished.set()

    async def _top_up(
        self,
        consumer: AIOKafkaConsumer,
        records: dict[TopicPartition, list[ConsumerRecord[Any, Any]]],
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """Add what is already buffered for the other ready partitions, max_batch each.

        aiokafka quirk: getmany(max_records=n) drains one partition's buffered fetch
        before it looks at the next, so one busy partition would starve the others.
        """
        got = {tp.partition for tp in records}
        for p, slot in list(self._slots.items()):
            if slot.ready and p not in got:
                tps = self._tps(p)
                if tps:
                    more = await consumer.getmany(*tps, timeout_ms=0, max_records=self._max_batch)
                    records.update(more)
        return records

    async def stop(self) -> None:
        """Finish the in-flight transactions, stop the producers, leave the group."""
        if self._closed:
            return
        self._closed = True
        self._stop_requested.set()
        if self._run_task is not None:
            await asyncio.gather(self._run_task, return_exceptions=True)
        elif self._running:
            await self._run_finished.wait()
        async with self._busy:
            for slot in list(self._slots.values()):
                await self._teardown(slot)
            self._slots.clear()
        if self._consumer is not None:
            await self._consumer.stop()
        self._log.info("txloop_stopped", **_stats_fields(self.stats))

    async def __aenter__(self) -> TransactionalLoop:
        await self.start()
        self._run_task = asyncio.create_task(self.run(), name=f"txloop-{self._consumer_name}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("call start() first")
        return self._consumer

    async def _check_co_partitioned(self) -> None:
        # aiokafka quirk: consumer.topics() refreshes a copy of the metadata, not the one
        # partitions_for_topic() reads, so ask an admin client instead.
        admin = make_admin(self._cfg)
        await admin.start()
        try:
            described = await admin.describe_topics(list(self._input_topics))
        finally:
            await admin.close()
        counts = {t: 0 for t in self._input_topics}
        for topic in described:
            if topic.get("error_code", 0) == 0 and topic.get("topic") in counts:
                counts[topic["topic"]] = len(topic.get("partitions") or ())
        if len(set(counts.values())) != 1 or 0 in counts.values():
            raise ValueError(f"input topics must exist and be co-partitioned, got {counts}")

    # -- rebalance callbacks (run in aiokafka's coordinator task) ----------------------------

    async def _on_revoked(self, partitions: set[int]) -> None:
        async with self._busy:  # let the in-flight transactions finish first
            for p in sorted(partitions):
                slot = self._slots.pop(p, None)
                if slot is not None:
                    await self._teardown(slot)
        if partitions:
            self._log.info("txloop_partitions_revoked", partitions=sorted(partitions))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._require_consumer()
        partitions = sorted({tp.partition for tp in assigned})
        async with self._busy:
            for p in partitions:
                old = self._slots.pop(p, None)
                if old is not None:
                    await self._teardown(old)
                self._slots[p] = _Slot(p)
            # Until the loop has started p's producer, rebuilt its state and sought to the
            # committed offsets, nothing of p may be returned by getmany.
            if assigned:
                consumer.pause(*assigned)
        self._log.info("txloop_partitions_assigned", partitions=partitions)

    # -- the loop ----------------------------------------------------------------------------

    async def _process(
        self, records: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> None:
        by_partition: dict[int, list[list[ConsumerRecord[Any, Any]]]] = defaultdict(list)
        for tp in sorted(records, key=lambda tp: self._topic_rank.get(tp.topic, 0)):
            by_partition[tp.partition].append(records[tp])
        async with self._busy:
            work = []
            for p, per_topic in by_partition.items():
                slot = self._slots.get(p)
                if slot is None or not slot.ready:
                    # Fetched across a rebalance or a reset: the reset re-seeks, so these
                    # records are read again once the partition is ready.
                    continue
                # Keep offset order per topic; interleave topics by record time.
                merged = list(heapq.merge(*per_topic, key=lambda r: r.timestamp))
                work.append(self._process_partition(slot, merged))
            await asyncio.gather(*work)

    async def _process_partition(
        self, slot: _Slot, records: list[ConsumerRecord[Any, Any]]
    ) -> None:
        singles = max((i for i, r in enumerate(records) if self._one_by_one(slot, r)), default=-1)
        for record in records[: singles + 1]:
            if not await self._run_unit(slot, [record], single=True):
                return  # the partition was reset or fenced: the rest is read again
        rest = records[singles + 1 :]
        if rest and slot.ready:
            await self._run_unit(slot, rest, single=False)

    def _one_by_one(self, slot: _Slot, record: ConsumerRecord[Any, Any]) -> bool:
        limit = slot.one_by_one_until.get(TopicPartition(record.topic, record.partition), -1)
        return bool(record.offset <= limit)

    async def _run_unit(
        self, slot: _Slot, records: list[ConsumerRecord[Any, Any]], *, single: bool
    ) -> bool:
        """Decide and commit ``records`` in one transaction; False if the partition reset."""
        p = slot.partition
        outgoing: list[Outgoing] = []
        good: list[Incoming] = []
        by_offset: dict[tuple[str, int], ConsumerRecord[Any, Any]] = {}
        skipped = 0
        for record in records:
            strike = slot.strikes.get((record.topic, record.offset))
            if strike is not None and strike[0] >= 3:
                skipped += 1
                self._log.error(
                    "txloop_record_skipped",
                    topic=record.topic,
                    partition=p,
                    offset=record.offset,
                    error=strike[1],
                )
                continue
            if strike is not None and strike[0] >= 2:
                outgoing.append(self._dead_letter(record, TransactionFailed(strike[1])))
                continue
            try:
                message = decode_record(record, self._cfg.prefix)
            except ContractError as exc:
                outgoing.append(self._dead_letter(record, exc))
                continue
            incoming = Incoming.of(record, message, headers=True)
            by_offset[(record.topic, record.offset)] = record
            good.append(incoming)

        reset_after = False
        traced: dict[str, Any] | None = None
        if good and tracing.ENABLED:
            traced, good = tracing.begin_batch(self._consumer_name, good)
        if good:
            try:
                produced = await self._handler.handle(p, good)
                if traced is not None:
                    produced = tracing.stamp_caused(produced, traced)
                _check_sizes(produced, self._cfg.max_message_bytes)
                outgoing.extend(produced)
            except Exception as exc:  # the handler's bug or rejection; never an endless replay
                if traced is not None:
                    tracing.end_batch(traced, exc)
                    traced = None
                if not single:
                    self._log.warning(
                        "txloop_handler_failed",
                        partition=p,
                        batch=len(good),
                        error_type=type(exc).__name__,
                        error=str(exc)[:500],
                    )
                    self._mark_one_by_one(slot, records)
                    await self._schedule_reset(slot, delay=0.0)
                    return False
                record = by_offset[(good[0].topic, good[0].offset)]
                outgoing.append(self._dead_letter(record, exc))
                reset_after = not isinstance(exc, PoisonMessage)

        offsets = _next_offsets(records)
        started = time.perf_counter()
        error = await self._transact(slot, outgoing, offsets)
        if traced is not None:
            tracing.end_batch(traced, error)
        ops.record_unit(
            self._consumer_name,
            ((i.topic, i.message) for i in good),
            len(records),
            sum(isinstance(o.message, DeadLetter) for o in outgoing),
            time.perf_counter() - started,
            error is None,
        )
        if error is None:
            self.stats.committed += 1
            self.stats.skipped += skipped
            self._log_committed_dead_letters(outgoing)
            slot.failures = 0
            _forget_below(slot, offsets)
            if reset_after:
                await self._schedule_reset(slot, delay=0.0)
                return False
            return True
        await self._transaction_failed(slot, records, error, single=single)
        return False

    def _dead_letter(self, record: ConsumerRecord[Any, Any], error: BaseException) -> Outgoing:
        letter = dead_letter(
            record, error, self._consumer_name, max_bytes=self._cfg.max_value_bytes
        )
        return Outgoing(self._deadletter_topic, letter.data.origin_key or "", letter)

    def _log_committed_dead_letters(self, outgoing: Sequence[Outgoing]) -> None:
        for item in outgoing:
            if isinstance(item.message, DeadLetter):
                self.stats.dead_letters += 1
                data = item.message.data
                self._log.warning(
                    "txloop_dead_letter",
                    topic=data.origin_topic,
                    partition=data.origin_partition,
                    offset=data.origin_offset,
                    error_type=data.error_type,
                    message_id=str(item.message.message_id),
                )

    async def _transact(
        self,
        slot: _Slot,
        outgoing: Sequence[Outgoing],
        offsets: dict[TopicPartition, OffsetAndMetadata],
    ) -> BaseException | None:
        producer = slot.producer
        if producer is None:
            return RuntimeError("no producer for this partition")
        try:
            async with asyncio.timeout(self._txn_timeout_s):
                await producer.begin_transaction()
                await send_all(producer, outgoing)
                await producer.send_offsets_to_transaction(offsets, self._group_id)
                await producer.commit_transaction()
        except Exception as exc:
            return exc
        return None

    async def _transaction_failed(
        self,
        slot: _Slot,
        records: list[ConsumerRecord[Any, Any]],
        error: BaseException,
        *,
        single: bool,
    ) -> None:
        p = slot.partition
        producer = slot.producer
        self.stats.failed += 1
        abort_error = await _abort(producer) if producer is not None else None
        # A fenced producer often reports it only through its dead sender task (the next
        # call then trips aiokafka's state machine), or through the abort we just tried.
        causes = [error, abort_error, _sender_error(producer)]
        if any(_is_fenced(c) for c in causes if c is not None):
            await self._fence(slot, error)
            return
        cause = _sender_error(producer) or error
        retriable = _is_retriable(cause)
        self._log.warning(
            "txloop_transaction_failed",
            partition=p,
            records=len(records),
            error_type=type(cause).__name__,
            error=str(cause)[:500],
            retriable=retriable,
        )
        if not retriable:
            self._mark_one_by_one(slot, records)
            if single:
                key = (records[0].topic, records[0].offset)
                count = slot.strikes.get(key, (1, ""))[0] + 1
                slot.strikes[key] = (count, f"{type(cause).__name__}: {cause}"[:2000])
        slot.failures += 1
        await self._schedule_reset(slot, delay=self._backoff(slot.failures - 1))

    def _mark_one_by_one(self, slot: _Slot, records: list[ConsumerRecord[Any, Any]]) -> None:
        for tp, meta in _next_offsets(records).items():
            slot.one_by_one_until[tp] = max(slot.one_by_one_until.get(tp, -1), meta.offset - 1)

    def _backoff(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return float(min(self._max_backoff_s, 0.05 * 2 ** min(failures, 10)))

    async def _schedule_reset(self, slot: _Slot, *, delay: float) -> None:
        """Stop using ``slot`` now; :meth:`_maintain` resets it once ``delay`` has passed."""
        slot.ready = False
        slot.resume_at = time.monotonic() + delay
        tps = self._tps(slot.partition)
        if tps:
            self._require_consumer().pause(*tps)

    async def _fence(self, slot: _Slot, error: BaseException) -> None:
        """Another producer owns this partition now: stop touching it until a rebalance."""
        p = slot.partition
        slot.ready = False
        slot.fenced = True
        slot.resume_at = None  # never reset here: that would fence the new owner back
        self.stats.fenced += 1
        tps = self._tps(p)
        if tps:
            self._require_consumer().pause(*tps)
        await self._teardown(slot)
        self._log.error(
            "txloop_partition_fenced",
            partition=p,
            transactional_id=self.transactional_id(p),
            error_type=type(error).__name__,
        )

    # -- resets ------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Reset the partitions that are due (newly assigned, or after a failure)."""
        now = time.monotonic()
        due = [
            s
            for s in self._slots.values()
            if not s.ready and not s.fenced and s.resume_at is not None and s.resume_at <= now
        ]
        if due:
            async with self._busy:
                live = [s for s in due if self._slots.get(s.partition) is s]
                await asyncio.gather(*(self._try_reset(s) for s in live))

    async def _try_reset(self, slot: _Slot) -> None:
        try:
            await self._reset(slot)
        except Exception as exc:
            slot.failures += 1
            delay = self._backoff(slot.failures)
            slot.resume_at = time.monotonic() + delay
            self._log.warning(
                "txloop_partition_reset_failed",
                partition=slot.partition,
                error_type=type(exc).__name__,
                error=str(exc)[:500],
                retry_in_s=delay,
            )

    async def _reset(self, slot: _Slot) -> None:
        """(Re)start p's producer, rebuild p's state, seek p's inputs to the committed offsets.

        The order matters: starting the producer fences older owners and waits for their
        transactions to complete, so the state and the committed offsets read afterwards
        are final.
        """
        consumer = self._require_consumer()
        p = slot.partition
        started = time.monotonic()
        slot.ready = False
        tps = self._tps(p)
        if tps:
            consumer.pause(*tps)
        await self._teardown(slot)
        producer = self._producer_factory(self.transactional_id(p))
        try:
            await producer.start()
        except BaseException:
            await _close_producer(producer)
            raise
        slot.producer = producer
        slot.loaded = True  # a half-built state is dropped by on_revoked too
        await self._handler.on_assigned(p)
        positions: dict[str, int | None] = {}
        for tp in tps:
            committed = await consumer.committed(tp)
            positions[tp.topic] = committed
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        if tps:
            consumer.resume(*tps)
        slot.ready = True
        slot.resume_at = None
        self.stats.resets += 1
        ops.RESETS.labels(self._consumer_name).inc()
        self._log.info(
            "txloop_partition_ready",
            partition=p,
            transactional_id=self.transactional_id(p),
            committed=positions,
            took_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _teardown(self, slot: _Slot) -> None:
        """Drop p's producer and state (no transaction is open: callers hold ``_busy``)."""
        producer, slot.producer = slot.producer, None
        slot.ready = False
        if producer is not None:
            await _close_producer(producer)
        if slot.loaded:
            slot.loaded = False
            try:
                await self._handler.on_revoked(slot.partition)
            except Exception as exc:
                self._log.error(
                    "txloop_on_revoked_failed",
                    partition=slot.partition,
                    error_type=type(exc).__name__,
                    error=str(exc)[:500],
                )

    def _tps(self, partition: int) -> list[TopicPartition]:
        consumer = self._require_consumer()
        return sorted(
            (tp for tp in consumer.assignment() if tp.partition == partition),
            key=lambda tp: self._topic_rank.get(tp.topic, 0),
        )


# -- helpers -----------------------------------------------------------------------------------


class TransactionFailed(Exception):
    """Dead-letter error of a record whose transaction failed alone, non-retriably, twice."""


def _check_sizes(outgoing: Sequence[Outgoing], limit: int) -> None:
    """Refuse, before the transaction begins, a record the producer would refuse inside it
    (an aborted transaction, a reset partition): the handler's failure, as any other."""
    for item in outgoing:
        if not item.fits(limit):
            what = f"{item.message.type} record for {item.topic}"
            raise MessageTooLarge(what, item.size(), limit)


def _next_offsets(
    records: Iterable[ConsumerRecord[Any, Any]],
) -> dict[TopicPartition, OffsetAndMetadata]:
    last: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        last[tp] = max(last.get(tp, -1), r.offset)
    return {tp: OffsetAndMetadata(offset + 1, "") for tp, offset in last.items()}


def _forget_below(slot: _Slot, committed: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
    for tp, meta in committed.items():
        if slot.one_by_one_until.get(tp, -1) < meta.offset:
            slot.one_by_one_until.pop(tp, None)
    if slot.strikes:
        done = {tp.topic: meta.offset for tp, meta in committed.items()}
        slot.strikes = {
            k: v for k, v in slot.strikes.items() if k[0] not in done or k[1] >= done[k[0]]
        }


def _sender_error(producer: AIOKafkaProducer | None) -> BaseException | None:
    """The exception that killed the producer's background sender, if any.

    aiokafka quirk: when the sender dies (e.g. ``ProducerFenced`` on AddOffsetsToTxn), the
    transaction manager turns FATAL and later calls fail with ``IllegalOperation`` or an
    ``AssertionError`` from its state machine instead of the real cause.
    """
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    if not isinstance(task, asyncio.Task) or not task.done() or task.cancelled():
        return None
    return task.exception()


def _txn_state(producer: AIOKafkaProducer) -> TransactionState | None:
    manager = getattr(producer, "_txn_manager", None)
    return getattr(manager, "state", None)


async def _abort(producer: AIOKafkaProducer) -> BaseException | None:
    """Abort the open transaction if aiokafka's state machine allows it; return its error."""
    if _txn_state(producer) not in (
        TransactionState.IN_TRANSACTION,
        TransactionState.ABORTABLE_ERROR,
    ):
        return None
    try:
        async with asyncio.timeout(10):
            await producer.abort_transaction()
    except Exception as exc:
        return exc
    return None


async def _close_producer(producer: AIOKafkaProducer) -> None:
    try:
        async with asyncio.timeout(10):
            await producer.stop()
    except Exception as exc:  # a dead producer may fail to flush; it is discarded anyway
        log.debug("txloop_producer_stop_failed", error_type=type(exc).__name__)
    # aiokafka quirk: a fatal error leaves an exception on the transaction waiter that nobody
    # awaits ("Future exception was never retrieved"); read it to keep the logs clean.
    manager = getattr(producer, "_txn_manager", None)
    waiter = getattr(manager, "_transaction_waiter", None)
    if waiter is not None and waiter.done() and not waiter.cancelled():
        waiter.exception()


def _chain(error: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_fenced(error: BaseException) -> bool:
    return any(isinstance(e, ProducerFenced | InvalidProducerEpoch) for e in _chain(error))


def _is_retriable(error: BaseException) -> bool:
    if isinstance(error, TimeoutError):
        return True
    return isinstance(error, KafkaError) and bool(error.retriable)


def _stats_fields(stats: LoopStats) -> dict[str, int]:
    return {
        "committed": stats.committed,
        "failed": stats.failed,
        "dead_letters": stats.dead_letters,
        "resets": stats.resets,
        "fenced": stats.fenced,
        "skipped": stats.skipped,
    }
