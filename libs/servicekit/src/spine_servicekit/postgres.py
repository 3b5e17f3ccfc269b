"""PostgreSQL plumbing shared by services: pools, schemas and numbered migrations.

Every service keeps its tables in its own schema (docs/operations.md), and the schema is
always a parameter, never a literal: a rebuild replays into a fresh schema and swaps it in. A pool
made by :func:`create_pool` puts that schema first on the ``search_path``, so a
projection's SQL names its tables unqualified and works unchanged in any schema.

Migrations are a list of SQL strings per component; ``<schema>.schema_migrations`` records
how many have run, and they run under an advisory lock so replicas starting together do
not race each other.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

import asyncpg

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def quote_schema(schema: str) -> str:
    """Return ``schema`` as a quoted identifier, refusing anything but plain lowercase names.

    Schema names end up in DDL, where they cannot be bind parameters; the strict pattern
    keeps them from carrying SQL.
    """
    if not _IDENT.match(schema):
        raise ValueError(f"schema name {schema!r} must match {_IDENT.pattern}")
    return f'"{schema}"'


def lock_key(*parts: str) -> int:
    """A stable 32-bit advisory-lock key for a name (the same in every process)."""
    return zlib.crc32("\x1f".join(parts).encode())


class PoolConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection released without asyncpg's reset query.

    asyncpg sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every
    release: one more round trip per projector batch and per read. Pool connections here
    only hold transaction-scoped state (``pg_advisory_xact_lock*``, ``SET LOCAL``) and never
    LISTEN, so there is nothing to reset; an open transaction is still rolled back. Session
    locks and listeners use their own ``asyncpg.connect`` connection (rebuild, notify).
    """

    def get_reset_query(self) -> str:
        return ""


async def create_pool(
    database_url: str,
    *,
    schema: str | None = None,
    application_name: str | None = None,
    min_size: int = 1,
    max_size: int = 4,
    **options: Any,
) -> asyncpg.Pool:
    """An asyncpg pool whose connections resolve unqualified names in ``schema`` first."""
    server_settings: dict[str, str] = dict(options.pop("server_settings", None) or {})
    if schema is not None:
        server_settings["search_path"] = f"{quote_schema(schema)}, public"
    if application_name:
        server_settings["application_name"] = application_name[:63]
    options.setdefault("connection_class", PoolConnection)
    pool = await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        server_settings=server_settings,
        **options,
    )
    assert pool is not None
    return pool


async def ensure_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Create ``schema`` and its migration ledger if missing (idempotent)."""
    q = quote_schema(schema)
    async with conn.transaction():
        # CREATE ... IF NOT EXISTS still races with a concurrent creator; the lock orders them.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key("schema", schema))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {q}.schema_migrations (
                    component  text        NOT NULL,
                    version    int         NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (component, version))"""
        )


async def migrate(
    conn: asyncpg.Connection, schema: str, component: str, migrations: Sequence[str]
) -> int:
    """Run the migrations of ``component`` that have not run yet; return how many ran.

    Migration *i* runs in its own transaction with ``search_path`` set to ``schema``, so
    its DDL names tables unqualified. Append to the list; never edit a migration that
    has shipped.
    """
    await ensure_schema(conn, schema)
    q = quote_schema(schema)
    ran = 0
    for version, sql in enumerate(migrations, start=1):
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", lock_key("migrate", schema, component)
            )
            done = await conn.fetchval(
                f"SELECT 1 FROM {q}.schema_migrations WHERE component = $1 AND version = $2",
                component,
                version,
            )
            if done:
                continue
            await conn.execute(f"SET LOCAL search_path TO {q}, public")
            await conn.execute(sql)
            await conn.execute(
                f"INSERT INTO {q}.schema_migrations (component, version) VALUES ($1, $2)",
                component,
                version,
            )
            ran += 1
    return ran


async def drop_schema(conn: asyncpg.Connection, schema: str) -> None:
    """Drop ``schema`` and everything in it (a projection is rebuilt from Kafka)."""
    await conn.execute(f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE")
