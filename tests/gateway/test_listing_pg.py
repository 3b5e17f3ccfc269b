"""The list queries and their indexes on a real PostgreSQL schema: an existing store gets
the indexes from the projection's migrations, and the adapter's keyset pages hold ties,
wildcard characters of ids and inclusive date bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio
from spine_gateway.adapters.postgres import ReadModel
from spine_gateway.listing import ExecutionFilter, PageKey
from spine_gateway.projection import EXECUTIONS_DDL, Marks, executions_projection, users_projection
from spine_servicekit.postgres import create_pool, migrate

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def _insert(conn: asyncpg.Connection, eid: str, user: str, at: datetime, **kw: str) -> None:
    await conn.execute(
        """INSERT INTO executions (execution_id, user_id, flow_id, flow_version, status,
               input_data, metadata, last_seq, created_at, updated_at)
           VALUES ($1, $2, $3, 'v1', $4, '{}', '{}', 0, $5, $5)""",
        eid,
        user,
        kw.get("flow_id", "f"),
        kw.get("status", "running"),
        at,
    )


async def _indexes(conn: asyncpg.Connection, schema: str, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = $2",
        schema,
        table,
    )
    return {r["indexname"] for r in rows}


async def test_an_existing_store_gets_the_list_indexes(database_url: str, pg_schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, pg_schema, "gw_executions", (EXECUTIONS_DDL,))  # as shipped before
        await conn.execute(f'SET search_path TO "{pg_schema}"')
        await _insert(conn, "e1", "u1", T0)
        assert "executions_user" in await _indexes(conn, pg_schema, "executions")
        migrations = executions_projection(Marks()).migrations
        ran = await migrate(conn, pg_schema, "gw_executions", migrations)
        assert ran == len(migrations) - 1  # every one after the first
        got = await _indexes(conn, pg_schema, "executions")
        assert {
            "executions_user_page",
            "executions_page",
            "executions_user_status_page",
            "executions_status_page",
            "executions_user_flow_page",
            "executions_id_prefix",
        } <= got
        assert "executions_user" not in got  # executions_user_page covers it
        assert await conn.fetchval("SELECT count(*) FROM executions") == 1
        await migrate(conn, pg_schema, "gw_users", users_projection(Marks()).migrations)
        assert "users_page" in await _indexes(conn, pg_schema, "users")
    finally:
        await conn.close()


@pytest_asyncio.fixture(loop_scope="session")
async def read(database_url: str, pg_schema: str) -> AsyncIterator[ReadModel]:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, pg_schema, "gw_executions", executions_projection(Marks()).migrations)
        await conn.execute(f'SET search_path TO "{pg_schema}"')
        # ties on created_at; ids with a LIKE wildcard in them
        await _insert(conn, "a_b1", "u1", T0)
        await _insert(conn, "axb1", "u1", T0)
        await _insert(conn, "a_b2", "u1", T0 + timedelta(seconds=1), status="failed")
        await _insert(conn, "zz", "u1", T0 + timedelta(seconds=2), flow_id="g")
        await _insert(conn, "a_b3", "u2", T0 + timedelta(seconds=1))
    finally:
        await conn.close()
    pool = await create_pool(database_url, schema=pg_schema)
    try:
        yield ReadModel(pool)
    finally:
        await pool.close()


async def _ids(read: ReadModel, f: ExecutionFilter, after: PageKey | None = None) -> list[str]:
    rows, _ = await read.executions_page(f, after=after, limit=10)
    return [r["execution_id"] for r in rows]


async def test_pages_filters_and_ties(read: ReadModel) -> None:
    u1 = ExecutionFilter(user_id="u1")
    assert await _ids(read, u1) == ["zz", "a_b2", "axb1", "a_b1"]
    assert await _ids(read, u1, PageKey(T0, "axb1")) == ["a_b1"]  # the tie broken by id
    assert await _ids(read, u1, PageKey(T0 + timedelta(seconds=1), "a_b2")) == ["axb1", "a_b1"]
    assert await _ids(read, ExecutionFilter(user_id="u1", id_prefix="a_")) == ["a_b2", "a_b1"]
    assert await _ids(read, ExecutionFilter(id_prefix="a_b")) == ["a_b3", "a_b2", "a_b1"]
    bounds = ExecutionFilter(user_id="u1", created_from=T0, created_to=T0 + timedelta(seconds=1))
    assert await _ids(read, bounds) == ["a_b2", "axb1", "a_b1"]  # both ends inclusive
    failed = ExecutionFilter(user_id="u1", statuses=("failed", "queued"))
    assert await _ids(read, failed) == ["a_b2"]
    assert await _ids(read, ExecutionFilter(flow_id="g")) == ["zz"]
    rows, total = await read.executions_page(ExecutionFilter(), after=None, limit=2, offset=1)
    assert [r["execution_id"] for r in rows] == ["a_b3", "a_b2"] and total == 5
