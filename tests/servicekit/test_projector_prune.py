"""Pruning the projector's dedupe rows, on real Kafka and PostgreSQL.

Records carry explicit timestamps (the dedupe window is measured in record time), so the
test can place messages minutes or hours apart without waiting: ids seen more than the window
before the frontier are deleted by the loop's periodic prune, a duplicate within the
window is still dropped, and a copy further apart than the window is applied again (with
or without its row: pruning never changes what is applied).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import TopicPartition
from spine_contracts import to_bytes, topics
from spine_contracts.messages.executions import ExecutionCompleted
from spine_servicekit.kafka import KafkaConfig, make_producer
from spine_servicekit.postgres import drop_schema
from spine_servicekit.projector import (
    MESSAGES_TABLE,
    Incoming,
    Projection,
    Projector,
)
from support import fresh_topics

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

MINUTE_MS = 60 * 1000
WINDOW_S = 20 * 60.0  # 20 minutes (the broker takes timestamps up to an hour ahead)


async def _apply(conn: asyncpg.Connection, batch: Any) -> None:
    items: list[Incoming] = list(batch)
    await conn.executemany(
        "INSERT INTO seen (message_id, execution_id) VALUES ($1, $2)",
        [(i.message.message_id, i.message.data.execution_id) for i in items],  # type: ignore[attr-defined]
    )


PROJECTION = Projection(
    name="prune_test",
    topics=(topics.EXECUTION_EVENTS,),
    apply=_apply,
    migrations=("CREATE TABLE seen (message_id uuid NOT NULL, execution_id text NOT NULL)",),
    dedupe_window_s=WINDOW_S,
)


@pytest_asyncio.fixture(loop_scope="session")
async def cfg(kafka: KafkaConfig) -> KafkaConfig:
    return await fresh_topics(kafka, [topics.EXECUTION_EVENTS, topics.DEADLETTER])


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def _produce(cfg: KafkaConfig, records: list[tuple[bytes, int]]) -> dict[TopicPartition, int]:
    """Send ``(value, timestamp_ms)`` records keyed alike (one partition); the end offsets."""
    producer = make_producer(cfg)
    await producer.start()
    try:
        ends: dict[TopicPartition, int] = {}
        for value, ts in records:
            meta = await producer.send_and_wait(
                cfg.topic(topics.EXECUTION_EVENTS), value, key=b"k", timestamp_ms=ts
            )
            tp = TopicPartition(meta.topic, meta.partition)
            ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
        return ends
    finally:
        await producer.stop()


async def _ledger(db: asyncpg.Connection, schema: str) -> set[uuid.UUID]:
    rows = await db.fetch(
        f'SELECT message_id FROM "{schema}".{MESSAGES_TABLE} WHERE projection = $1',
        PROJECTION.name,
    )
    return {r["message_id"] for r in rows}


async def _applied(db: asyncpg.Connection, schema: str) -> list[str]:
    rows = await db.fetch(f'SELECT execution_id FROM "{schema}".seen ORDER BY execution_id')
    return [r["execution_id"] for r in rows]


async def test_old_ids_are_pruned_and_a_duplicate_within_the_window_is_dropped(
    cfg: KafkaConfig, db: asyncpg.Connection, database_url: str
) -> None:
    schema = f"t_prune_{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    old = [ExecutionCompleted.build(execution_id=f"old-{i}", seq=1) for i in range(3)]
    recent = ExecutionCompleted.build(execution_id="recent", seq=1)
    # prune after every batch, two rows per delete transaction
    projector = Projector(
        cfg, database_url, PROJECTION, schema=schema, prune_interval_s=0.0, prune_batch=2
    )
    try:
        await projector.start()
        # 1. three ids seen three hours ago and one ten minutes ago: the old ones are pruned
        ends = await _produce(
            cfg,
            [
                *[(to_bytes(m), now - 180 * MINUTE_MS) for m in old],
                (to_bytes(recent), now - 10 * MINUTE_MS),
            ],
        )
        await projector.wait_for_offsets(ends)
        await projector.wait_for(lambda _: projector.stats.pruned >= 3)
        assert await _ledger(db, schema) == {recent.message_id}
        assert projector.stats.pruned == 3

        # 2. a copy of `recent` 5 minutes later is dropped (its row is kept); a copy of
        #    an old id, three hours after it was first seen, is applied again
        ends = await _produce(
            cfg, [(to_bytes(recent), now - 5 * MINUTE_MS), (to_bytes(old[0]), now)]
        )
        await projector.wait_for_offsets(ends)
        assert projector.stats.duplicates == 1
        assert await _applied(db, schema) == ["old-0", "old-0", "old-1", "old-2", "recent"]
        assert await _ledger(db, schema) == {recent.message_id, old[0].message_id}

        # 3. the window is record time, row or no row: a copy of `recent` 40 minutes after
        #    it is applied again, though its row was still there
        ends = await _produce(cfg, [(to_bytes(recent), now + 30 * MINUTE_MS)])
        await projector.wait_for_offsets(ends)
        assert projector.stats.duplicates == 1
        applied = await _applied(db, schema)
        assert applied.count("recent") == 2
        assert await projector.prune() == 0  # nothing is older than the window yet
        assert await _ledger(db, schema) == {recent.message_id, old[0].message_id}
    finally:
        await projector.stop()
        await drop_schema(db, schema)


async def test_a_ledger_from_before_the_window_migrates_and_keeps_deduping(
    cfg: KafkaConfig, db: asyncpg.Connection, database_url: str
) -> None:
    """Rows written before ``seen_at`` existed count as seen at the migration: a copy of
    such a message within the window is still dropped, and nothing is pruned early."""
    schema = f"t_prune_{uuid.uuid4().hex[:8]}"
    first = ExecutionCompleted.build(execution_id="before", seq=1)
    await db.execute(f'CREATE SCHEMA "{schema}"')
    await db.execute(
        f"""CREATE TABLE "{schema}".{MESSAGES_TABLE} (
                projection text NOT NULL, message_id uuid NOT NULL,
                PRIMARY KEY (projection, message_id))"""
    )
    await db.execute(
        f'INSERT INTO "{schema}".{MESSAGES_TABLE} VALUES ($1, $2)',
        PROJECTION.name,
        first.message_id,
    )
    projector = Projector(cfg, database_url, PROJECTION, schema=schema, prune_interval_s=0.0)
    try:
        await projector.start()
        ends = await _produce(cfg, [(to_bytes(first), int(time.time() * 1000))])
        await projector.wait_for_offsets(ends)
        assert projector.stats.duplicates == 1 and await _applied(db, schema) == []
        assert await projector.prune() == 0
        assert await _ledger(db, schema) == {first.message_id}
    finally:
        await projector.stop()
        await drop_schema(db, schema)
