"""The orchestrator's projection on a real PostgreSQL schema: it keeps no table of applied
message ids (``dedupe=False``), so applying events again — early or late repeats, in any
batches — must leave exactly the rows of applying each once (G6)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from crash.helpers import execution_trail
from spine_contracts import (
    Message,
)
from spine_orchestrator.projection import MIGRATIONS, PROJECTION
from spine_servicekit.projector import Incoming

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _events(eid: str) -> list[Message]:
    return execution_trail(eid, T0)


@pytest_asyncio.fixture(loop_scope="session")
async def conn(database_url: str, pg_schema: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    await connection.execute(f'SET search_path TO "{pg_schema}"')
    for ddl in MIGRATIONS:
        await connection.execute(ddl)
    try:
        yield connection
    finally:
        await connection.close()


async def _apply(conn: asyncpg.Connection, messages: list[Message], size: int) -> None:
    items = [Incoming("events", 0, i, None, 0, m) for i, m in enumerate(messages)]
    for i in range(0, len(items), size):
        async with conn.transaction():
            await PROJECTION.apply(conn, items[i : i + size])


async def _rows(conn: asyncpg.Connection, eid: str) -> dict[str, Any]:
    def strip(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in dict(r).items() if k not in ("execution_id", "task_id")} for r in rows
        ]

    return {
        "execution": strip(await conn.fetch("SELECT * FROM executions WHERE execution_id=$1", eid)),
        "nodes": strip(
            await conn.fetch(
                "SELECT * FROM node_runs WHERE execution_id=$1 ORDER BY node_id, attempt", eid
            )
        ),
        "messages": strip(
            await conn.fetch(
                "SELECT * FROM agent_messages WHERE execution_id=$1 ORDER BY task_id", eid
            )
        ),
    }


async def test_repeats_in_any_batches_leave_the_rows_of_one_application(
    conn: asyncpg.Connection,
) -> None:
    assert PROJECTION.dedupe is False
    once_id = f"e-{uuid.uuid4().hex[:8]}"
    await _apply(conn, _events(once_id), 100)
    once = await _rows(conn, once_id)
    assert once["execution"][0]["status"] == "completed"
    assert [(n["node_id"], n["attempt"], n["status"]) for n in once["nodes"]] == [
        ("a", 1, "failed"),
        ("a", 2, "completed"),
        ("b", 1, "completed"),
    ]
    for size in (1, 3, 100):
        eid = f"e-{uuid.uuid4().hex[:8]}"
        events = _events(eid)
        # an early repeat, then late repeats of a waiting node and an older status
        replayed = events[:3] + events[1:3] + events[3:] + events[5:7] + events[:2]
        await _apply(conn, replayed, size)
        assert await _rows(conn, eid) == once, f"batches of {size}"
