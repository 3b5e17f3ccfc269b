"""Projector: Kafka events into PostgreSQL rows, with the offsets in the same transaction.

A service describes its read model as a :class:`Projection` (name, source topics,
migrations, an ``apply`` coroutine) and runs it with a :class:`Projector` into a schema
that is always a parameter (a rebuild replays into a fresh schema and swaps; see
docs/operations.md).

Per fetched batch (up to ``max_batch`` records) the projector opens ONE transaction:

0. take the schema's pause lock in shared mode (:func:`pause_lock_key`): a rebuild
   holds it exclusively while it catches up to, compares with and swaps out this
   schema, so live batches wait for it instead of moving on;
1. lock this projection's rows of ``<schema>.projector_offsets`` for the batch's
   partitions and drop records below the stored ``next_offset`` (someone else applied
   them: a replica during a rebalance, or a previous life of this process);
2. drop messages whose ``message_id`` this projection has already applied (recorded in
   ``<schema>.projector_messages`` in the same transaction, with the record's timestamp):
   a message published twice, at two offsets, is applied once (``Projection.dedupe``, on
   by default) when the copies' record timestamps are less than
   ``Projection.dedupe_window_s`` (7 days) apart;
3. ``apply(conn, messages)`` with the decoded messages, partition order preserved;
4. send a :class:`~spine_contracts.DeadLetter` for every record that does not decode, is
   of a type its topic does not carry, or that ``apply`` rejects (isolated by
   re-applying the batch one message per savepoint), and wait for the broker's
   acknowledgement: at least once, with a deterministic ``message_id`` so a repeat
   after a crash is recognisable;
5. store each partition's next offset and ``NOTIFY`` :data:`NOTIFY_CHANNEL`; commit.

Rows, dedupe records and offsets therefore commit together: a crash at any point loses
nothing and applies nothing twice.

The dedupe rows would grow for ever; at most every ``prune_interval_s`` (60 s) after a
batch, the projector deletes, in short transactions of ``prune_batch`` rows, those older
than the window: older than ``frontier - dedupe_window_s``, where the frontier is the
oldest of the partitions' latest applied record timestamps (a partition with nothing left
to read counts as "now"). A deleted row could only have dropped a copy more than the
window apart, which step 2 applies anyway, so pruning never changes what is applied
(and a rebuild, which prunes too, equals the live tables).

PostgreSQL is the source of truth for positions;
Kafka group offsets are committed only for lag dashboards, best effort, in group mode.

A rebuild (:mod:`spine_servicekit.rebuild`) runs the same projection into a fresh
schema with :meth:`Projector.limit` set to the live offsets, so it never applies past
what the live projector has stored and can stop at exactly its position.

Assignment: by default the projector assigns itself every partition of its topics (no
consumer group). A projection is one logical writer per schema, a rebuild needs an
independent reader from offset 0, the gateway's read-your-writes wants one process
that knows every partition's progress, and there is no rebalance pause. Pass
``group_id`` to split partitions between replicas instead; each assignment then seeks to
the offsets stored in PostgreSQL, and the row locks of step 1 keep a partition that is
briefly owned twice from being applied twice.

The stored offset is the consumer's position after the batch, not "last record + 1", so
it moves past transaction markers and compacted gaps and reaches the end offsets that
:meth:`Projector.wait_until_caught_up` compares it with.

    ProjectorError
    ├── ProjectorFailed      the loop stopped on an error (``__cause__``)
    └── ProjectorNotRunning  start() was not called, or stop() was
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import IllegalStateError, KafkaError
from spine_contracts import ContractError, topics
from spine_contracts.topics import FOREVER, TopicSpec
from spine_kafka import tracing
from spine_kafka.clients import (
    Incoming,
    KafkaConfig,
    Outgoing,
    dead_letter,
    dead_letter_outgoing,
    decode_record,
    make_admin,
    make_consumer,
    make_producer,
    send_all,
)
from spine_kafka.logging import get_logger

from .postgres import create_pool, drop_schema, ensure_schema, lock_key, migrate, quote_schema

__all__ = [
    "DEDUPE_WINDOW_S",
    "MESSAGES_TABLE",
    "NOTIFY_CHANNEL",
    "OFFSETS_TABLE",
    "ApplyFn",
    "Incoming",
    "Projection",
    "Projector",
    "ProjectorError",
    "ProjectorFailed",
    "ProjectorNotRunning",
    "ProjectorStats",
    "SetupFn",
    "pause_lock_key",
    "prepare_schema",
    "read_offsets",
    "wait_for_stored_offsets",
]

#: Channel notified (payload ``<schema>.<projection>``) whenever a batch commits.
NOTIFY_CHANNEL = "spine_projector_offsets"
OFFSETS_TABLE = "projector_offsets"
#: ``message_id`` of every message a projection has applied (or dead-lettered).
MESSAGES_TABLE = "projector_messages"
_LEDGER_COMPONENT = "spine_projector"
_OFFSETS_DDL = f"""
CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} (
    projection  text        NOT NULL,
    topic       text        NOT NULL,
    partition   int         NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
)"""
_MESSAGES_DDL = f"""
CREATE TABLE IF NOT EXISTS {MESSAGES_TABLE} (
    projection text NOT NULL,
    message_id uuid NOT NULL,
    PRIMARY KEY (projection, message_id)
)"""
#: when each id was seen (its record's timestamp), for the window and the pruning; rows
#: from before this migration count as seen when it ran
_MESSAGES_SEEN_DDL = f"""
ALTER TABLE {MESSAGES_TABLE} ADD COLUMN seen_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX {MESSAGES_TABLE}_seen ON {MESSAGES_TABLE} (projection, seen_at)"""
#: how long a message id is remembered (by record timestamps): a week
DEDUPE_WINDOW_S = 7 * 24 * 3600.0
_TOPIC_WAIT_S = 15.0

#: Errors worth retrying the same batch for: the database or broker may come back.
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, query cancelled
    asyncpg.exceptions.InsufficientResourcesError,
    KafkaError,
)
#: Errors that say the projection's code or schema is wrong, not the message.
_FATAL: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.SyntaxOrAccessError,
    asyncpg.exceptions.InvalidSchemaNameError,
    asyncpg.InterfaceError,
)


class ProjectorError(Exception):
    """Base of the projector's errors."""


class ProjectorFailed(ProjectorError):
    """The projection loop stopped on an error; it is the ``__cause__``."""


class ProjectorNotRunning(ProjectorError):
    pass


def pause_lock_key(schema: str) -> int:
    """The advisory lock every live batch into ``schema`` takes shared; a rebuild, exclusive."""
    return lock_key("projector-pause", schema)


ApplyFn = Callable[[asyncpg.Connection, Sequence[Incoming]], Awaitable[None]]
SetupFn = Callable[[asyncpg.Connection], Awaitable[None]]
#: a projector's ``tap`` or ``on_applied``: sees a batch, must not block
BatchHook = Callable[[Sequence[Incoming]], None]


@dataclass(frozen=True)
class Projection:
    """A read model: what it reads, how its tables are made, how a batch is applied.

    ``topics`` are registry specs (resolved with the deployment's prefix) or concrete
    names. ``migrations`` and ``setup`` run at start with ``search_path`` set to the
    target schema, and ``apply`` runs on a connection with the same ``search_path``:
    name tables unqualified and the same code projects into any schema. ``apply`` must
    only write through the connection it is given (it runs inside the offsets'
    transaction) and may be handed any subset of messages again after a rejection.

    ``dedupe`` records every applied ``message_id`` and skips a message seen before, so
    ``apply`` sees each message once even when it was published twice. ``apply`` must
    derive every column from the messages (never ``now()``), so a rebuild from offset 0
    equals the live tables row for row.
    """

    name: str
    topics: tuple[TopicSpec | str, ...]
    apply: ApplyFn
    migrations: tuple[str, ...] = ()
    setup: SetupFn | None = None
    dedupe: bool = True
    #: copies whose record timestamps are further apart than this are applied again
    dedupe_window_s: float = DEDUPE_WINDOW_S


@dataclass
class ProjectorStats:
    """Counts since the last ``start()``."""

    batches: int = 0
    applied: int = 0
    skipped: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    pruned: int = 0


@dataclass
class _Item:
    record: ConsumerRecord[Any, Any]
    incoming: Incoming | None = None
    error: BaseException | None = None

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.record.topic, self.record.partition)


class _ApplyRejected(Exception):
    """``apply`` raised on a batch; retry it one message at a time."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, projector: Projector) -> None:
        self._projector = projector

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._projector._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._projector._on_assigned(set(assigned))


def _key(record: ConsumerRecord[Any, Any]) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)


def _count(fetched: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> int:
    return sum(len(records) for records in fetched.values())


#: how many ``max_batch`` of records a pause reads ahead at most (one transaction then)
READ_AHEAD_BATCHES = 4
#: ``min_interval_s`` for projections no request waits on: under a burst, one PostgreSQL
#: transaction per interval instead of one per handful of records
BATCH_INTERVAL_S = 0.25


class Projector:
    """Runs one :class:`Projection` into ``schema``: ``start()``/``stop()`` or ``async with``.

    The ``wait_*`` methods take no timeout: wrap them in ``asyncio.timeout(...)``.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        database_url: str,
        projection: Projection,
        *,
        schema: str,
        group_id: str | None = None,
        max_batch: int = 500,
        poll_timeout_ms: int = 200,
        kafka_commit_interval_s: float = 1.0,
        prune_interval_s: float = 60.0,
        prune_batch: int = 5000,
        min_interval_s: float = 0.0,
        pace_from: int = 1,
        tap: BatchHook | None = None,
        on_applied: BatchHook | None = None,
    ) -> None:
        quote_schema(schema)
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._kafka = kafka
        self._database_url = database_url
        self.projection = projection
        self.schema = schema
        self.group_id = group_id
        self._max_batch = max_batch
        self._poll_timeout_ms = poll_timeout_ms
        self._kafka_commit_interval_s = kafka_commit_interval_s
        self._prune_interval_s = prune_interval_s
        self._prune_batch = prune_batch
        #: at least this long between the starts of two batches: a read model nobody waits
        #: on gathers a burst into one PostgreSQL transaction (and one fetch) per interval
        #: instead of one per handful of records; a record after a quiet spell is not held.
        self._min_interval_s = min_interval_s
        #: ... but only after a batch of at least this many records: a read model a request
        #: waits on stays immediate one record at a time and paces only under a burst
        self._pace_from = max(1, pace_from)
        #: sees every decoded batch before it is applied (a live feed; must not block or raise)
        self._tap = tap
        #: sees every batch once it is committed, before any waiter wakes (cache invalidation)
        self._on_applied = on_applied
        self._last_prune = time.monotonic()
        #: the latest applied record timestamp (ms) per partition, for the prune frontier
        self._latest_ts: dict[TopicPartition, int] = {}
        self.name = f"projector:{schema}.{projection.name}"
        self.topic_names = tuple(
            kafka.topic(t) if isinstance(t, TopicSpec) else t for t in projection.topics
        )
        self.stats = ProjectorStats()
        self._log = get_logger(__name__).bind(projection=projection.name, schema=schema)
        self._pool: asyncpg.Pool | None = None
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._applied: dict[TopicPartition, int] = {}
        self._changed = asyncio.Condition()
        self._batch_lock = asyncio.Lock()
        self._assigned = asyncio.Event()
        self._failure: BaseException | None = None
        self._stopped = False
        self._last_kafka_commit = 0.0
        self._ceiling: dict[TopicPartition, int] | None = None
        #: read ahead during a pause and shown to the tap already: (topic, partition, offset)
        self._decoded: dict[tuple[str, int, int], _Item] = {}
        self._pause_key = pause_lock_key(schema)
        q = quote_schema(schema)
        # new, or last seen more than the window before: applied (and the row renewed)
        self._sql_seen = f"""
            INSERT INTO {q}.{MESSAGES_TABLE} AS s (projection, message_id, seen_at)
            SELECT $1, m, t FROM unnest($2::uuid[], $3::timestamptz[]) AS u(m, t)
            ON CONFLICT (projection, message_id) DO UPDATE SET seen_at = EXCLUDED.seen_at
            WHERE s.seen_at < EXCLUDED.seen_at - make_interval(secs => $4)
            RETURNING message_id"""
        self._sql_prune = f"""
            WITH old AS (
                SELECT message_id FROM {q}.{MESSAGES_TABLE}
                WHERE projection = $1 AND seen_at < $2
                ORDER BY seen_at LIMIT $3
                FOR UPDATE SKIP LOCKED)
            DELETE FROM {q}.{MESSAGES_TABLE} AS s USING old
            WHERE s.projection = $1 AND s.message_id = old.message_id"""
        self._sql_lock = f"""
            INSERT INTO {q}.{OFFSETS_TABLE} AS o (projection, topic, partition, next_offset)
            SELECT $1, t, p, 0 FROM unnest($2::text[], $3::int[]) AS u(t, p)
            ON CONFLICT (projection, topic, partition)
            DO UPDATE SET next_offset = o.next_offset
            RETURNING topic, partition, next_offset"""
        self._sql_store = f"""
            WITH stored AS (
                UPDATE {q}.{OFFSETS_TABLE} AS o
                SET next_offset = GREATEST(o.next_offset, u.n), updated_at = now()
                FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, n)
                WHERE o.projection = $1 AND o.topic = u.t AND o.partition = u.p
                RETURNING 1)
            SELECT (SELECT count(*) FROM stored), pg_notify($5, $6)"""

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def with_schema(self, schema: str, *, group_id: str | None = None) -> Projector:
        """The same projection into another schema (a rebuild); manual assignment by default."""
        return Projector(
            self._kafka,
            self._database_url,
            self.projection,
            schema=schema,
            group_id=group_id,
            max_batch=self._max_batch,
            poll_timeout_ms=self._poll_timeout_ms,
            kafka_commit_interval_s=self._kafka_commit_interval_s,
            prune_interval_s=self._prune_interval_s,
            prune_batch=self._prune_batch,
        )

    async def __aenter__(self) -> Projector:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self, *, assignment_timeout: float = 30.0) -> None:
        """Create the schema, run migrations, resume from the stored offsets, start consuming."""
        if self._task is not None:
            raise ProjectorError(f"{self.name} was already started")
        self.stats = ProjectorStats()
        self._failure = None
        self._stopped = False
        self._assigned.clear()
        self._applied.clear()
        self._latest_ts.clear()
        self._warn_unreplayable()
        try:
            self._pool = await create_pool(
                self._database_url,
                schema=self.schema,
                application_name=self.name,
                min_size=1,
                max_size=2,
            )
            async with self._pool.acquire() as conn:
                await prepare_schema(conn, self.schema)
                await migrate(conn, self.schema, self.projection.name, self.projection.migrations)
                if self.projection.setup is not None:
                    async with conn.transaction():
                        await self.projection.setup(conn)
            self._producer = make_producer(self._kafka)
            await self._producer.start()
            consumer = make_consumer(
                self._kafka, group_id=self.group_id, max_poll_records=self._max_batch
            )
            self._consumer = consumer
            if self.group_id is None:
                await consumer.start()
                partitions = await self._discover_partitions()
                consumer.assign(partitions)
                await self._resume(set(partitions))
            else:
                consumer.subscribe(list(self.topic_names), listener=_Rebalance(self))
                await consumer.start()
                async with asyncio.timeout(assignment_timeout):
                    await self._assigned.wait()
        except BaseException:
            await self._close_clients()
            raise
        self._task = asyncio.create_task(self._run(), name=self.name)
        self._log.info(
            "projector_started",
            group_id=self.group_id,
            resume_from={f"{tp.topic}/{tp.partition}": o for tp, o in self._applied.items()},
        )

    async def stop(self) -> None:
        """Finish the batch in flight, then close the consumer, producer and pool."""
        if self._task is None:
            return
        task, self._task = self._task, None
        async with self._batch_lock:
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        await self._commit_to_kafka(force=True)
        await self._close_clients()
        self._stopped = True
        async with self._changed:
            self._changed.notify_all()
        self._log.info("projector_stopped", stats=vars(self.stats))

    async def reset(self) -> None:
        """Drop the schema (rows, offsets, migration ledger): the next start replays from 0.

        The schema is the unit a service owns and a rebuild swaps, so every projection
        kept in it is reset together.
        """
        if self._task is not None:
            raise ProjectorError("stop the projector before reset()")
        conn = await asyncpg.connect(self._database_url)
        try:
            await drop_schema(conn, self.schema)
        finally:
            await conn.close()
        self._applied.clear()
        self._log.info("projector_reset")

    # --- progress ------------------------------------------------------------------------

    def applied_offsets(self) -> dict[TopicPartition, int]:
        """Next offset per assigned partition, as committed to PostgreSQL."""
        return dict(self._applied)

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def limit(self, ceiling: Mapping[TopicPartition, int] | None) -> None:
        """Apply nothing at or past ``ceiling`` (next offsets; a partition not named: 0).

        A rebuild sets it to the live projector's stored offsets so it can stop at
        exactly that position; ``None`` lifts it. Callable before :meth:`start`.
        """
        self._ceiling = dict(ceiling) if ceiling is not None else None
        consumer = self._consumer
        if consumer is not None:
            paused = consumer.paused()
            if paused:  # the loop pauses again whatever is still at the ceiling
                consumer.resume(*paused)

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """The assigned partitions' current end offsets (last stable offset: read_committed)."""
        if self._consumer is None:
            raise ProjectorNotRunning(self.name)
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        offsets: dict[TopicPartition, int] = await self._consumer.end_offsets(assigned)
        return offsets

    async def wait_for(self, predicate: Callable[[Mapping[TopicPartition, int]], bool]) -> None:
        """Wait until ``predicate(applied_offsets())`` holds after a committed batch.

        Raises :class:`ProjectorFailed` if the loop died, or :class:`ProjectorNotRunning`
        once the projector stops.
        """
        async with self._changed:
            while True:
                if self._failure is not None:
                    raise ProjectorFailed(f"{self.name} failed") from self._failure
                if predicate(self._applied):
                    return
                if self._stopped or self._task is None:
                    raise ProjectorNotRunning(self.name)
                await self._changed.wait()

    async def wait_for_offsets(self, targets: Mapping[TopicPartition, int]) -> None:
        """Wait until every partition in ``targets`` has been applied up to that next offset.

        For read-your-writes, a producer passes ``{tp: metadata.offset + 1}``.
        """
        wanted = dict(targets)
        await self.wait_for(
            lambda applied: all(applied.get(tp, -1) >= n for tp, n in wanted.items())
        )

    async def wait_until_caught_up(self) -> dict[TopicPartition, int]:
        """Wait until everything committed to the topics before this call is applied."""
        targets = await self.end_offsets()
        await self.wait_for_offsets(targets)
        return targets

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._consumer is not None
        ahead: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] | None = None
        try:
            while True:
                if ahead:
                    fetched, ahead = ahead, None
                else:
                    fetched = await self._consumer.getmany(
                        timeout_ms=self._poll_timeout_ms, max_records=self._max_batch
                    )
                started = time.monotonic()
                await self._handle(fetched)
                if self._min_interval_s > 0 and _count(fetched) >= self._pace_from:
                    ahead = await self._read_ahead(started + self._min_interval_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not swallowed: the loop ends and every waiter gets ProjectorFailed.
            self._failure = exc
            self._log.error("projector_failed", exc_info=exc)
            async with self._changed:
                self._changed.notify_all()

    async def _read_ahead(
        self, until: float
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """The pause after a burst's batch: what arrives meanwhile is read, decoded and shown
        to the tap at once (a live stream never waits for the pause), and applied together
        when the pause is over — one PostgreSQL transaction per interval."""
        assert self._consumer is not None
        gathered: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        count, cap = 0, READ_AHEAD_BATCHES * self._max_batch
        while (left := until - time.monotonic()) > 0:
            if count >= cap:  # enough held in memory: the rest waits in Kafka
                await asyncio.sleep(left)
                break
            more = await self._consumer.getmany(
                timeout_ms=max(1, int(left * 1000)),
                max_records=min(self._max_batch, cap - count),
            )
            if self._tap is not None and more:
                items = [self._decode(r) for records in more.values() for r in records]
                self._feed(self._tap, items)
                self._decoded.update((_key(item.record), item) for item in items)
            for tp, records in more.items():
                gathered.setdefault(tp, []).extend(records)
                count += len(records)
        return gathered

    async def _handle(
        self, fetched: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> None:
        positions = await self._positions()
        if self._ceiling is not None:
            fetched, positions = self._below_ceiling(fetched, positions, self._ceiling)
        tapped = self._decoded
        self._decoded = {}
        items = [
            tapped.get(_key(record)) or self._decode(record)
            for tp, records in fetched.items()
            if tp in positions
            for record in records
        ]
        moved = {tp: p for tp, p in positions.items() if p > self._applied.get(tp, 0)}
        if not items and not moved:
            return
        if self._tap is not None:
            fresh = [it for it in items if _key(it.record) not in tapped]
            if fresh:
                self._feed(self._tap, fresh)
        # Positions of partitions without records move past transaction markers too.
        positions = {tp: p for tp, p in positions.items() if tp in moved or tp in fetched}
        isolate = False
        attempt = 0
        while True:
            try:
                async with self._batch_lock:
                    await self._transact(items, positions, isolate=isolate)
                break
            except _ApplyRejected as exc:
                self._log.warning("projector_batch_rejected", error=repr(exc.__cause__))
                isolate = True
            except _TRANSIENT as exc:
                attempt += 1
                delay = min(0.05 * 2**attempt, 5.0)
                self._log.warning(
                    "projector_batch_retry", attempt=attempt, delay_s=delay, error=repr(exc)
                )
                await asyncio.sleep(delay)
        if self._on_applied is not None:
            self._feed(self._on_applied, items)
        async with self._changed:
            self._changed.notify_all()
        await self._commit_to_kafka()
        if self.projection.dedupe and time.monotonic() - self._last_prune >= self._prune_interval_s:
            await self.prune()

    def _feed(self, hook: BatchHook, items: Sequence[_Item]) -> None:
        try:
            hook([it.incoming for it in items if it.incoming is not None])
        except Exception as exc:  # a hook never stops the read model
            self._log.error(
                "projector_hook_failed", hook=getattr(hook, "__name__", ""), exc_info=exc
            )

    # --- pruning the dedupe rows ---------------------------------------------------------

    def prune_cutoff(self) -> datetime | None:
        """Rows seen before this may go (None: a partition is behind with nothing applied)."""
        consumer = self._consumer
        frontier = time.time() * 1000
        for tp in consumer.assignment() if consumer is not None else ():
            highwater = consumer.highwater(tp) if consumer is not None else None
            if highwater is not None and self._applied.get(tp, -1) >= highwater:
                continue  # nothing left to read: whatever comes next is new
            latest = self._latest_ts.get(tp)
            if latest is None:
                return None
            frontier = min(frontier, latest)
        return datetime.fromtimestamp(frontier / 1000, UTC) - timedelta(
            seconds=self.projection.dedupe_window_s
        )

    async def prune(self) -> int:
        """Delete the dedupe rows older than the window, ``prune_batch`` rows per
        transaction; return how many went. Called by the loop every ``prune_interval_s``."""
        self._last_prune = time.monotonic()
        cutoff = self.prune_cutoff()
        if cutoff is None or self._pool is None:
            return 0
        total = 0
        while True:
            async with self._batch_lock, self._pool.acquire() as conn, _transaction(conn):
                await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", self._pause_key)
                status = await conn.execute(
                    self._sql_prune, self.projection.name, cutoff, self._prune_batch
                )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < self._prune_batch:
                break
        if total:
            self.stats.pruned += total
            self._log.info("projector_dedupe_pruned", rows=total, before=cutoff.isoformat())
            async with self._changed:
                self._changed.notify_all()
        return total

    def _below_ceiling(
        self,
        fetched: Mapping[TopicPartition, list[ConsumerRecord[Any, Any]]],
        positions: Mapping[TopicPartition, int],
        ceiling: Mapping[TopicPartition, int],
    ) -> tuple[dict[TopicPartition, list[ConsumerRecord[Any, Any]]], dict[TopicPartition, int]]:
        """Keep what lies below the ceiling; rewind and pause the partitions that reach it."""
        assert self._consumer is not None
        kept: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
        for tp, records in fetched.items():
            top = ceiling.get(tp, 0)
            below = [r for r in records if r.offset < top]
            if below:
                kept[tp] = below
        capped: dict[TopicPartition, int] = {}
        for tp, position in positions.items():
            top = ceiling.get(tp, 0)
            capped[tp] = min(position, top)
            if position >= top:
                if position > top:
                    try:  # what lies past the ceiling is read again once it rises
                        self._consumer.seek(tp, top)
                    except IllegalStateError:
                        continue
                self._consumer.pause(tp)
        return kept, capped

    async def _positions(self) -> dict[TopicPartition, int]:
        assert self._consumer is not None
        positions: dict[TopicPartition, int] = {}
        for tp in self._consumer.assignment():
            try:
                positions[tp] = await self._consumer.position(tp)
            except IllegalStateError:  # revoked by a rebalance meanwhile
                continue
        return positions

    def _decode(self, record: ConsumerRecord[Any, Any]) -> _Item:
        item = _Item(record)
        if record.value is None:
            return item  # a compaction tombstone: nothing to apply, the offset still moves
        try:
            message = decode_record(record, self._kafka.prefix)
        except ContractError as exc:
            item.error = exc
            return item
        item.incoming = Incoming.of(record, message)
        return item

    async def _transact(
        self, items: Sequence[_Item], positions: Mapping[TopicPartition, int], *, isolate: bool
    ) -> None:
        assert self._pool is not None and self._producer is not None
        started_ns = time.time_ns() if tracing.ENABLED else 0
        tps = sorted({it.tp for it in items} | set(positions))  # one lock order for all replicas
        async with self._pool.acquire() as conn, _transaction(conn):
            # First, before any row lock: a rebuild holding it exclusively pauses us here.
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", self._pause_key)
            rows = await conn.fetch(
                self._sql_lock,
                self.projection.name,
                [tp.topic for tp in tps],
                [tp.partition for tp in tps],
            )
            stored = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            fresh = [it for it in items if it.record.offset >= stored[it.tp]]
            messages = [it for it in fresh if it.incoming is not None]
            duplicates = 0
            if self.projection.dedupe and messages:
                messages, duplicates = await self._unseen(conn, messages)
            if isolate:
                await self._apply_each(conn, messages)
            elif messages:
                try:
                    batch = [it.incoming for it in messages if it.incoming is not None]
                    await self.projection.apply(conn, batch)
                except (*_TRANSIENT, *_FATAL):
                    raise
                except Exception as exc:
                    raise _ApplyRejected() from exc
            dead = [it for it in fresh if it.error is not None]
            if dead:
                await send_all(self._producer, [self._dead_letter(it) for it in dead])
            new: dict[TopicPartition, int] = {}
            for tp in tps:
                last = max((it.record.offset + 1 for it in items if it.tp == tp), default=0)
                new[tp] = max(stored[tp], positions.get(tp, 0), last)
            stored_rows = await conn.fetchval(
                self._sql_store,
                self.projection.name,
                [tp.topic for tp in tps],
                [tp.partition for tp in tps],
                [new[tp] for tp in tps],
                NOTIFY_CHANNEL,
                f"{self.schema}.{self.projection.name}",
            )
            if stored_rows != len(tps):  # the lock statement created every row
                raise ProjectorError(f"{self.name}: stored {stored_rows} of {len(tps)} offsets")
        # Committed: publish progress, and skip what another owner applied meanwhile.
        for it in items:
            if it.record.timestamp is not None and it.record.timestamp >= 0:
                latest = self._latest_ts.get(it.tp, it.record.timestamp)
                self._latest_ts[it.tp] = max(latest, it.record.timestamp)
        for tp, offset in new.items():
            self._applied[tp] = offset
            if self._consumer is not None and offset > positions.get(tp, offset):
                try:
                    self._consumer.seek(tp, offset)
                except IllegalStateError:
                    pass
        if tracing.ENABLED:
            traced = [it.incoming.message for it in messages if it.incoming is not None]
            tracing.record_batch(f"project {self.projection.name}", traced, started_ns)
        self.stats.batches += 1
        self.stats.applied += len(messages) - sum(it.error is not None for it in messages)
        self.stats.skipped += len(items) - len(fresh)
        self.stats.dead_letters += len(dead)
        self.stats.duplicates += duplicates
        if duplicates:
            self._log.info("projector_duplicates_skipped", count=duplicates)
        for it in dead:
            self._log.warning(
                "projector_dead_letter",
                topic=it.record.topic,
                partition=it.record.partition,
                offset=it.record.offset,
                error_type=type(it.error).__name__,
                error=str(it.error)[:500],
            )
        self._log.debug(
            "projector_batch_committed", records=len(items), applied=len(messages), dead=len(dead)
        )

    async def _unseen(
        self, conn: asyncpg.Connection, messages: Sequence[_Item]
    ) -> tuple[list[_Item], int]:
        """Record the batch's message ids; keep the first copy of each id never applied."""
        first: dict[uuid.UUID, _Item] = {}
        for it in messages:
            assert it.incoming is not None
            first.setdefault(it.incoming.message.message_id, it)
        seen = [
            datetime.fromtimestamp(it.incoming.timestamp_ms / 1000, UTC)
            for it in first.values()
            if it.incoming is not None
        ]
        rows = await conn.fetch(
            self._sql_seen,
            self.projection.name,
            list(first),
            seen,
            self.projection.dedupe_window_s,
        )
        new = {r["message_id"] for r in rows}
        kept = [it for mid, it in first.items() if mid in new]
        return kept, len(messages) - len(kept)

    async def _apply_each(self, conn: asyncpg.Connection, items: Sequence[_Item]) -> None:
        """Apply one message per savepoint; a message ``apply`` rejects becomes a dead letter."""
        for it in items:
            assert it.incoming is not None
            it.error = None  # a retry after a transient failure judges every message afresh
            try:
                async with _transaction(conn):  # a savepoint
                    await self.projection.apply(conn, [it.incoming])
            except (*_TRANSIENT, *_FATAL):
                raise
            except Exception as exc:
                it.error = exc

    def _dead_letter(self, item: _Item) -> Outgoing:
        assert item.error is not None
        return dead_letter_outgoing(self._kafka, dead_letter(item.record, item.error, self.name))

    # --- assignment ----------------------------------------------------------------------

    async def _discover_partitions(self) -> list[TopicPartition]:
        """Every partition of the projection's topics (which must exist: never auto-created)."""
        admin = make_admin(self._kafka)
        await admin.start()
        try:
            deadline = time.monotonic() + _TOPIC_WAIT_S
            delay = 0.05
            while True:
                # Metadata for all topics: asking for named ones may auto-create them.
                described = {t["topic"]: t for t in await admin.describe_topics()}
                found = [
                    TopicPartition(name, p["partition"])
                    for name in self.topic_names
                    if name in described and described[name]["error_code"] == 0
                    for p in described[name]["partitions"]
                ]
                missing = {n for n in self.topic_names} - {tp.topic for tp in found}
                if not missing:
                    return sorted(found)
                if time.monotonic() > deadline:
                    raise ProjectorError(f"{self.name}: topics missing: {sorted(missing)}")
                await asyncio.sleep(delay)  # a just-created topic's metadata propagates
                delay = min(delay * 2, 1.0)
        finally:
            await admin.close()

    async def _resume(self, partitions: set[TopicPartition]) -> None:
        """Seek each partition to its stored next offset, or to the beginning."""
        assert self._pool is not None and self._consumer is not None
        async with self._pool.acquire() as conn:
            stored = await read_offsets(conn, self.schema, self.projection.name)
        fresh: list[TopicPartition] = []
        for tp in partitions:
            if tp in stored:
                self._consumer.seek(tp, stored[tp])
                self._applied[tp] = stored[tp]
            else:
                fresh.append(tp)
                self._applied[tp] = 0
        if fresh:
            await self._consumer.seek_to_beginning(*fresh)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._batch_lock:
            await self._resume(assigned)
        self._assigned.set()
        self._log.info(
            "projector_assigned", partitions=sorted(f"{t.topic}/{t.partition}" for t in assigned)
        )
        async with self._changed:
            self._changed.notify_all()

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._batch_lock:
            await self._commit_to_kafka(force=True, only=revoked)
            for tp in revoked:
                self._applied.pop(tp, None)

    # --- Kafka group offsets (lag visibility only) ---------------------------------------

    async def _commit_to_kafka(
        self, *, force: bool = False, only: set[TopicPartition] | None = None
    ) -> None:
        if self.group_id is None or self._consumer is None:
            return
        now = time.monotonic()
        if not force and now - self._last_kafka_commit < self._kafka_commit_interval_s:
            return
        self._last_kafka_commit = now
        offsets = {tp: o for tp, o in self._applied.items() if only is None or tp in only}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:  # PostgreSQL holds the positions; this is for dashboards
            self._log.debug("projector_kafka_commit_skipped", error=repr(exc))

    # --- helpers -------------------------------------------------------------------------

    def _warn_unreplayable(self) -> None:
        for name in self.topic_names:
            try:
                spec = topics.spec_for(name, self._kafka.prefix)
            except KeyError:
                continue
            if spec.cleanup_policy != "compact" and spec.retention_ms != FOREVER:
                self._log.warning(
                    "projector_topic_not_replayable", topic=name, retention=spec.retention_label
                )

    async def _close_clients(self) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        pool, self._pool = self._pool, None
        if consumer is not None:
            await consumer.stop()
        if producer is not None:
            await producer.stop()
        if pool is not None:
            await pool.close()


@asynccontextmanager
async def _transaction(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """``conn.transaction()``, except that a lost connection surfaces as itself.

    asyncpg's own context manager answers a dead connection with an ``InterfaceError``
    from the rollback, which would hide the retryable error that killed it.
    """
    tx = conn.transaction()
    await tx.start()
    try:
        yield
    except BaseException:
        if _alive(conn):
            await tx.rollback()
        raise
    await tx.commit()


def _alive(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # a pool proxy whose dead connection was taken back
        return False


async def prepare_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Create ``schema`` with the projectors' ledger (offsets, applied message ids)."""
    await ensure_schema(conn, schema)
    await migrate(
        conn, schema, _LEDGER_COMPONENT, [_OFFSETS_DDL, _MESSAGES_DDL, _MESSAGES_SEEN_DDL]
    )


async def read_offsets(
    conn: asyncpg.Connection, schema: str, projection: str
) -> dict[TopicPartition, int]:
    """The next offsets a projection has stored (empty if its table does not exist yet)."""
    q = quote_schema(schema)
    exists = await conn.fetchval("SELECT to_regclass($1)", f"{q}.{OFFSETS_TABLE}")
    if exists is None:
        return {}
    rows = await conn.fetch(
        f"SELECT topic, partition, next_offset FROM {q}.{OFFSETS_TABLE} WHERE projection = $1",
        projection,
    )
    return {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def wait_for_stored_offsets(
    database_url: str,
    schema: str,
    projection: str,
    predicate: Callable[[Mapping[TopicPartition, int]], bool],
) -> dict[TopicPartition, int]:
    """From any process: wait until the stored offsets satisfy ``predicate``; return them.

    Woken by the projector's ``NOTIFY`` on each commit, so it needs no polling; bound
    it with ``asyncio.timeout(...)``.
    """
    conn = await asyncpg.connect(database_url)
    changed = asyncio.Event()
    payload = f"{schema}.{projection}"

    def on_notify(_conn: object, _pid: int, _channel: str, data: str) -> None:
        if data == payload:
            changed.set()

    try:
        await conn.add_listener(NOTIFY_CHANNEL, on_notify)
        while True:
            changed.clear()
            offsets = await read_offsets(conn, schema, projection)
            if predicate(offsets):
                return offsets
            await changed.wait()
    finally:
        await conn.close()
