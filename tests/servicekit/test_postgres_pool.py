"""The shared pool releases connections without asyncpg's reset query, on real PostgreSQL.

What makes skipping the reset safe is that pool users only hold transaction-scoped state:
an advisory lock taken with ``pg_advisory_xact_lock`` and a ``SET LOCAL`` end with their
transaction, and a transaction left open is still rolled back on release. With
``max_size=1`` the next acquire gets the same connection, so anything left over would show.
"""

from __future__ import annotations

import pytest
from spine_servicekit.postgres import PoolConnection, create_pool, lock_key

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

KEY = lock_key("test", "pool-reset")


async def test_a_released_connection_keeps_no_transaction_state(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            assert isinstance(conn._con, PoolConnection)  # the proxy's connection
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", KEY)
                await conn.execute("SET LOCAL statement_timeout = '1234ms'")
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("CREATE TEMP TABLE left_open (x int) ON COMMIT DROP")
            # released with the transaction still open
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend  # same session
            assert not conn.is_in_transaction()
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1",
                backend,
            )
            assert held == 0
            assert await conn.fetchval("SHOW statement_timeout") != "1234ms"
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await pool.close()
