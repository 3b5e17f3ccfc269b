"""``GET /executions`` with 100,000 executions in the store: query plans and page latency.

A read-model measurement: a throwaway schema gets the gateway's executions tables and
indexes through the projection's own migrations, 100,000 rows go in directly (several users,
one of them with 40 % of the rows), then for a user's list and the admin's, first and deep
pages, with and without filters, it prints ``EXPLAIN (ANALYZE, BUFFERS)`` of the statement the
adapter runs and the p50/p95 of ~200 page requests through the adapter itself
(``ReadModel.executions_page``: the page and the total, as the route answers them), walking
the pages by cursor, beside the page statement alone. The schema is dropped at the end,
whatever happens.

    uv run python -m bench.list_scale [--rows 100000] [--requests 200]

Needs ``DATABASE_URL`` (``. .spine/infra.env``); touches nothing but its own schema.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from dataclasses import dataclass, replace
from datetime import timedelta

import asyncpg
from spine_gateway.adapters.postgres import ReadModel, execution_count_sql, execution_page_sql
from spine_gateway.listing import ExecutionFilter, PageKey, decode_cursor, encode_cursor
from spine_gateway.projection import Marks, executions_projection
from spine_servicekit.postgres import create_pool, drop_schema, ensure_schema, migrate

USERS = 10
FLOWS = ("credit_analysis", "echo_chain", "echo_fanout", "summarise", "triage")
PAGE = 50

#: users 0..9; user_0 holds 40 % of the rows, the others 6.7 % each
_INSERT = """
INSERT INTO executions (execution_id, user_id, flow_id, flow_version, status, input_data,
                        output_data, error_message, metadata, last_seq, created_at,
                        updated_at, completed_at)
SELECT gen_random_uuid()::text,
       CASE WHEN r < 0.4 THEN 'user_0' ELSE 'user_' || (1 + floor((r - 0.4) / 0.6 * 9))::int END,
       ($2::text[])[1 + (i % cardinality($2::text[]))],
       'v1',
       CASE WHEN s < 0.85 THEN 'completed' WHEN s < 0.93 THEN 'failed'
            WHEN s < 0.96 THEN 'cancelled' WHEN s < 0.98 THEN 'running'
            WHEN s < 0.99 THEN 'waiting_input' ELSE 'queued' END,
       '{"name": "Ana", "income": 6000, "amount": 12000, "term_months": 24}'::jsonb,
       CASE WHEN s < 0.85 THEN '{"decision": "approved", "score": 0.82}'::jsonb END,
       CASE WHEN s >= 0.85 AND s < 0.93 THEN 'agent unavailable' END,
       '{}'::jsonb, 7, at, at, CASE WHEN s < 0.96 THEN at + interval '3 seconds' END
FROM (SELECT i, random() AS r, random() AS s,
             now() - (random() * interval '30 days') AS at
      FROM generate_series(1, $1) AS i) AS g
"""


@dataclass(frozen=True)
class Case:
    name: str
    f: ExecutionFilter
    deep: int = 0  # start after this many rows (a cursor), 0: the first page
    offset: int = 0  # the deprecated offset instead


async def position(conn: asyncpg.Connection, f: ExecutionFilter, rows: int) -> PageKey | None:
    """The key of the ``rows``-th row of ``f``'s list (where a deep page's cursor points)."""
    sql, args = execution_page_sql(f, after=None, limit=1, offset=rows - 1)
    row = await conn.fetchrow(sql, *args)
    return None if row is None else PageKey(row["created_at"], row["execution_id"])


async def explain(conn: asyncpg.Connection, case: Case) -> str:
    after = await position(conn, case.f, case.deep) if case.deep else None
    sql, args = execution_page_sql(case.f, after=after, limit=PAGE + 1, offset=case.offset)
    out = [f"-- {case.name}", sql]
    for text, a in ((sql, args), execution_count_sql(case.f)):
        plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {text}", *a)
        out.append("\n".join(r[0] for r in plan))
    return "\n".join(out)


async def latencies(
    read: ReadModel, pool: asyncpg.Pool, conn: asyncpg.Connection, case: Case, n: int
) -> tuple[list[float], list[float]]:
    """``n`` page requests through the adapter (page and total), following ``next_cursor``
    from the case's start and starting over at the end of the list; and the page statement
    alone at each position (what the total costs is the difference); milliseconds."""
    start = await position(conn, case.f, case.deep) if case.deep else None
    after = start
    whole: list[float] = []
    page_only: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        rows, _total = await read.executions_page(
            case.f, after=after, limit=PAGE + 1, offset=case.offset
        )
        whole.append((time.perf_counter() - t0) * 1000)
        sql, args = execution_page_sql(case.f, after=after, limit=PAGE + 1, offset=case.offset)
        t0 = time.perf_counter()
        await pool.fetch(sql, *args)
        page_only.append((time.perf_counter() - t0) * 1000)
        if case.offset:
            continue
        if len(rows) > PAGE:  # as the service does: the cursor of the page's last row
            last = rows[PAGE - 1]
            assert last["created_at"] is not None
            after = decode_cursor("e", encode_cursor("e", last["created_at"], last["execution_id"]))
        else:
            after = start
    return whole, page_only


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


async def main(rows: int, requests: int) -> None:
    url = os.environ["DATABASE_URL"]
    schema = f"bench_list_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(url)
    try:
        await ensure_schema(conn, schema)
        await migrate(conn, schema, "gw_executions", executions_projection(Marks()).migrations)
        await conn.execute(f"SET search_path TO {schema}, public")
        t0 = time.perf_counter()
        await conn.execute(_INSERT, rows, list(FLOWS))
        await conn.execute("VACUUM (ANALYZE) executions")  # what autovacuum does in a store
        print(f"inserted {rows} rows into {schema} in {time.perf_counter() - t0:.1f} s")
        counts = await conn.fetch(
            "SELECT user_id, count(*) AS n FROM executions GROUP BY 1 ORDER BY 2 DESC LIMIT 3"
        )
        print("largest users:", ", ".join(f"{r['user_id']}={r['n']}" for r in counts))
        some_id = await conn.fetchval(
            "SELECT execution_id FROM executions WHERE user_id = 'user_0' LIMIT 1"
        )
        day = await conn.fetchval("SELECT max(created_at) FROM executions")
        user = ExecutionFilter(user_id="user_0")
        admin = ExecutionFilter()
        cases = [
            Case("user: first page", user),
            Case("user: deep page (cursor after 20,000 rows)", user, deep=20_000),
            Case("user: deep page by offset 20,000 (deprecated)", user, offset=20_000),
            Case("user: status=failed", replace(user, statuses=("failed",))),
            Case("user: status=running (rare)", replace(user, statuses=("running",))),
            Case(
                "user: status=running,waiting_input,queued",
                replace(user, statuses=("running", "waiting_input", "queued")),
            ),
            Case("user: flow_id=triage, deep 4,000", replace(user, flow_id="triage"), deep=4_000),
            Case(
                "user: created in one day, 5 days ago",
                replace(
                    user,
                    created_from=day - timedelta(days=6),
                    created_to=day - timedelta(days=5),
                ),
            ),
            Case("user: id_prefix (3 chars)", replace(user, id_prefix=some_id[:3])),
            Case("admin: first page", admin),
            Case("admin: deep page (cursor after 50,000 rows)", admin, deep=50_000),
            Case("admin: status=running", replace(admin, statuses=("running",))),
            Case("admin: id_prefix (4 chars)", replace(admin, id_prefix=some_id[:4])),
            Case("admin: one user (user_id=user_3)", ExecutionFilter(user_id="user_3")),
        ]
        for case in cases:
            print()
            print(await explain(conn, case))
        pool = await create_pool(url, schema=schema, min_size=2, max_size=4)
        try:
            read = ReadModel(pool)
            print(
                f"\n{'case':50} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}"
                f" {'page p50':>8} {'page p95':>8}  ({requests} requests each)"
            )
            for case in cases:
                ms, page_ms = await latencies(read, pool, conn, case, requests)
                print(
                    f"{case.name:50} {pct(ms, 50):7.2f} {pct(ms, 95):7.2f} {max(ms):7.2f}"
                    f" {pct(page_ms, 50):8.2f} {pct(page_ms, 95):8.2f}"
                )
        finally:
            await pool.close()
    finally:
        await drop_schema(conn, schema)
        await conn.close()
        print(f"\ndropped {schema}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    ns = parser.parse_args()
    asyncio.run(main(ns.rows, ns.requests))
