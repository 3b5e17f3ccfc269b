"""The live feed's rows and the usage series on a real PostgreSQL schema: the executions
projection writes one feed row per status change, the same whatever the batches and
repeats; a feed read after a cursor returns exactly what follows it, per tenant; settles
give the credits charged; the usage series counts per bucket with empty buckets as zeros."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import TopicPartition
from crash.helpers import execution_trail
from spine_contracts import (
    CancelExecution,
    CreditsSettled,
    ExecutionCancelled,
    ExecutionFailed,
    ExecutionQueued,
    ExecutionStarted,
    Message,
    UserCreated,
)
from spine_gateway.feed import ExecutionFeed, format_cursor
from spine_gateway.projection import (
    Marks,
    executions_projection,
    users_projection,
)
from spine_gateway.usage_series import UsageSeries, usage_range
from spine_servicekit.postgres import create_pool
from spine_servicekit.projector import Incoming, Projector

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest_asyncio.fixture(loop_scope="session")
async def pool(database_url: str, pg_schema: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, schema=pg_schema, max_size=2)
    async with p.acquire() as conn:
        # the two projections' own migrations, in their order: the schema they ship
        for projection in (executions_projection(Marks()), users_projection(Marks())):
            for ddl in projection.migrations:
                await conn.execute(ddl)
    try:
        yield p
    finally:
        await p.close()


def _owned(messages: list[Message], user: str, at: datetime = T0) -> list[Message]:
    """The trail with ``user`` as its owner, shifted to start at ``at``."""
    out = []
    for m in messages:
        if isinstance(m, ExecutionStarted | ExecutionQueued):
            m = m.model_copy(update={"data": m.data.model_copy(update={"user_id": user})})
        out.append(m.model_copy(update={"occurred_at": m.occurred_at - T0 + at}))
    return out


def _incoming(messages: Sequence[Message], partition: int, first: int) -> list[Incoming]:
    return [Incoming("events", partition, first + i, None, 0, m) for i, m in enumerate(messages)]


async def _apply(pool: asyncpg.Pool, items: list[Incoming], size: int) -> None:
    apply = executions_projection(Marks()).apply
    async with pool.acquire() as conn:
        for i in range(0, len(items), size):
            async with conn.transaction():
                await apply(conn, items[i : i + size])


async def _feed(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        """SELECT kafka_partition, kafka_offset, user_id, execution_id, flow_id, status, type,
                  seq FROM execution_feed ORDER BY 1, 2"""
    )
    return [tuple(r) for r in rows]


class _Progress:
    """What :class:`ExecutionFeed` asks of the executions projector to read: its partitions."""

    def __init__(self, partitions: int) -> None:
        self._applied = {TopicPartition("events", p): 0 for p in range(partitions)}

    def applied_offsets(self) -> dict[TopicPartition, int]:
        return dict(self._applied)


async def test_one_feed_row_per_status_change_whatever_the_batches(pool: asyncpg.Pool) -> None:
    feeds = []
    for partition, size in enumerate((1, 3, 100)):
        eid = f"e{partition}"
        items = _incoming(_owned(execution_trail(eid, T0), "u1"), partition, 100)
        await _apply(pool, items + items[2:7], size)  # with repeats: no-ops
        late = ExecutionCancelled.build(
            cause=CancelExecution.build(execution_id=eid), execution_id=eid, seq=11, reason="x"
        )
        await _apply(pool, _incoming([late], partition, 200), 1)  # after the end: no change
        rows = [r for r in await _feed(pool) if r[0] == partition]
        assert {r[3] for r in rows} == {eid}
        feeds.append([(r[1], r[2], *r[4:]) for r in rows])
    assert feeds[0] == feeds[1] == feeds[2]
    assert feeds[0] == [
        (100, "u1", "f", "running", "execution.started", 1),
        (105, "u1", "f", "waiting_input", "execution.node_waiting_input", 6),
        (106, "u1", "f", "running", "execution.input_received", 7),
        (108, "u1", "f", "completed", "execution.completed", 9),
    ]


async def test_a_queued_execution_then_started_then_failed(pool: asyncpg.Pool) -> None:
    queued = ExecutionQueued.build(
        execution_id="q1",
        seq=1,
        user_id="u1",
        flow_id="f",
        flow_version="v",
        flow=execution_trail("x", T0)[0].data.flow,  # type: ignore[attr-defined]
        input_data={},
    )
    started = ExecutionStarted.build(
        execution_id="q1",
        seq=2,
        user_id="u1",
        flow_id="f",
        flow_version="v",
        flow=queued.data.flow,
        input_data={},
    )
    failed = ExecutionFailed.build(execution_id="q1", seq=3, error_message="no")
    await _apply(pool, _incoming([queued, started, failed], 1, 0), 100)
    assert [(r[5], r[6]) for r in await _feed(pool)] == [
        ("queued", "execution.queued"),
        ("running", "execution.started"),
        ("failed", "execution.failed"),
    ]


async def test_a_read_after_a_cursor_gets_what_follows_for_its_tenant(pool: asyncpg.Pool) -> None:
    # u1's executions in both partitions, u2's in between
    await _apply(pool, _incoming(_owned(execution_trail("a", T0), "u1"), 0, 0), 100)
    await _apply(pool, _incoming(_owned(execution_trail("b", T0), "u2"), 0, 10), 100)
    await _apply(pool, _incoming(_owned(execution_trail("c", T0), "u1"), 1, 0), 100)
    feed = ExecutionFeed(pool, cast(Projector, _Progress(2)))

    everything = await feed.after("u1", {})
    assert {r["execution_id"] for r in everything} == {"a", "c"}
    assert len(everything) == 8
    for p in (0, 1):
        offsets = [r["kafka_offset"] for r in everything if r["kafka_partition"] == p]
        assert offsets == sorted(offsets)

    # resume after the first three rows the reader got: exactly the other five
    cursor: dict[int, int] = {}
    for row in everything[:3]:
        cursor[row["kafka_partition"]] = row["kafka_offset"]
    rest = await feed.after("u1", cursor)
    key = [(r["kafka_partition"], r["kafka_offset"]) for r in everything]
    assert [(r["kafka_partition"], r["kafka_offset"]) for r in rest] == key[3:]
    assert await feed.after("u1", {0: 10**6, 1: 10**6}) == []

    assert {r["execution_id"] for r in await feed.after("u2", {})} == {"b"}
    admin = await feed.after(None, {})
    assert {r["execution_id"] for r in admin} == {"a", "b", "c"} and len(admin) == 12
    assert len(await feed.after(None, {}, limit=2)) == 4  # two per partition
    assert feed.now() == {0: -1, 1: -1}
    assert format_cursor(cursor).count(":") == len(cursor)


async def test_settles_give_the_credits_and_tokens_charged_once(pool: asyncpg.Pool) -> None:
    def settle(eid: str, charged: int, at: datetime, tokens: tuple[int, int]) -> Message:
        m = CreditsSettled.build(
            user_id="u1",
            execution_id=eid,
            outcome="completed",
            charged=charged,
            refunded=0,
            balance=10,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
        )
        return m.model_copy(update={"occurred_at": at})

    created = UserCreated.build(
        user_id="u1", email="u1@x.test", rate_limit=5, key_hash="a" * 64, balance=15
    ).model_copy(update={"occurred_at": T0 - HOUR})
    items = _incoming(
        [created, settle("e1", 3, T0, (100, 20)), settle("e2", 2, T0 + HOUR, (0, 0))], 0, 0
    )
    apply = users_projection(Marks()).apply
    async with pool.acquire() as conn:
        for batch in (items, items[1:], items[1:2] * 2):  # a repeat changes nothing
            async with conn.transaction():
                await apply(conn, batch)
    rows = await pool.fetch("SELECT * FROM credits_charged ORDER BY execution_id")
    assert [
        (r["execution_id"], r["user_id"], r["charged"], r["settled_at"])
        + (r["input_tokens"], r["output_tokens"])
        for r in rows
    ] == [
        ("e1", "u1", 3, T0, 100, 20),
        ("e2", "u1", 2, T0 + HOUR, 0, 0),
    ]
    user = await pool.fetchrow("SELECT * FROM users WHERE user_id = 'u1'")
    assert (user["balance"], user["input_tokens"], user["output_tokens"]) == (10, 100, 20)


async def test_the_usage_series_counts_per_bucket_with_empty_ones_as_zeros(
    pool: asyncpg.Pool,
) -> None:
    # u1: one execution at 12:00 (ends 12:00:08), one at 14:30; u2: one at 12:10
    await _apply(pool, _incoming(_owned(execution_trail("a", T0), "u1"), 0, 0), 100)
    late = T0 + 2 * HOUR + timedelta(minutes=30)
    await _apply(pool, _incoming(_owned(execution_trail("b", late), "u1"), 0, 20), 100)
    other = T0 + timedelta(minutes=10)
    await _apply(pool, _incoming(_owned(execution_trail("c", other), "u2"), 1, 0), 100)
    charged = [
        ("a", "u1", 3, T0 + timedelta(seconds=9), 1000, 200),
        ("b", "u1", 5, late, 40, 2),
        ("c", "u2", 7, other, 9, 9),
    ]
    await pool.executemany(
        "INSERT INTO credits_charged (execution_id, user_id, charged, settled_at,"
        " input_tokens, output_tokens) VALUES ($1, $2, $3, $4, $5, $6)",
        charged,
    )
    series = UsageSeries(pool)
    span = usage_range(T0 - HOUR, T0 + 3 * HOUR, "hour", T0)
    mine = (await series.series("u1", span)).model_dump(by_alias=True)
    assert mine["from"] == (T0 - HOUR).isoformat() and mine["to"] == (T0 + 3 * HOUR).isoformat()
    got = [
        (b["start"], b["started"], b["completed"], b["credits"])
        + (b["input_tokens"], b["output_tokens"], b["tokens"])
        for b in mine["buckets"]
    ]
    assert got == [
        ((T0 - HOUR).isoformat(), 0, 0, 0, 0, 0, 0),
        (T0.isoformat(), 1, 1, 3, 1000, 200, 1200),
        ((T0 + HOUR).isoformat(), 0, 0, 0, 0, 0, 0),
        ((T0 + 2 * HOUR).isoformat(), 1, 1, 5, 40, 2, 42),
    ]
    assert all(b["failed"] == 0 for b in mine["buckets"])
    assert mine["totals"] == {
        "started": 2,
        "completed": 2,
        "failed": 0,
        "cancelled": 0,
        "credits": 8,
        "input_tokens": 1040,
        "output_tokens": 202,
        "tokens": 1242,
    }
    everyone = (await series.series(None, span)).model_dump(by_alias=True)
    assert everyone["user_id"] is None
    assert [b["started"] for b in everyone["buckets"]] == [0, 2, 0, 1]
    assert everyone["totals"]["credits"] == 15
    assert (everyone["totals"]["input_tokens"], everyone["totals"]["output_tokens"]) == (1049, 211)
    day = usage_range(T0, T0 + HOUR, "day", T0)
    whole = (await series.series("u2", day)).model_dump(by_alias=True)
    assert len(whole["buckets"]) == 1 and whole["totals"]["credits"] == 7
    nobody = (await series.series("nobody", span)).model_dump(by_alias=True)
    assert len(nobody["buckets"]) == 4 and nobody["totals"]["started"] == 0
