"""Queries on the gateway's own read model (its schema only; never another service's).

Each query returns typed rows (``TypedDict``s of the projection's columns, JSON columns
decoded), so a view is built from named fields, never from a guessed dict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

import asyncpg
import orjson

if TYPE_CHECKING:  # (listing → errors → models → this module at run time)
    from ..listing import ExecutionFilter, PageKey

Row = dict[str, Any]
T = TypeVar("T")


class UserRow(TypedDict):
    user_id: str
    email: str
    name: str
    organization: str
    rate_limit: int
    key_hash: str
    balance: int
    created_at: datetime
    updated_at: datetime
    max_in_flight: int | None
    max_queued: int | None
    input_tokens: int
    output_tokens: int


class KeyRow(TypedDict):
    key_id: str
    user_id: str
    key_hash: str
    name: str
    scopes: list[str]
    role: str
    expires_at: datetime | None
    last4: str
    created_by: str | None
    created_at: datetime
    revoked_at: datetime | None


class FlowRow(TypedDict):
    flow_id: str
    flow_version: str
    source: str
    definition: dict[str, Any]
    updated_at: datetime | None
    owner: str


class AgentRow(TypedDict):
    agent_id: str
    info: dict[str, Any]
    active: bool
    registered: bool
    last_seen: datetime | None
    owner: str


class ExecutionRow(TypedDict):
    execution_id: str
    user_id: str
    flow_id: str
    flow_version: str
    status: str
    input_data: dict[str, Any]
    output_data: dict[str, Any] | None
    error_message: str | None
    metadata: dict[str, Any]
    last_seq: int  # the seq of the last event applied (the SSE id of the last event)
    created_at: datetime | None
    updated_at: datetime | None
    completed_at: datetime | None


class NodeRow(TypedDict):
    node_id: str
    status: str
    agent_id: str | None
    attempt: int
    output: Any
    error_message: str | None
    started_at: datetime | None
    completed_at: datetime | None


class EventRow(TypedDict):
    seq: int
    type: str
    data: dict[str, Any]
    occurred_at: datetime | None


class UsageRow(TypedDict):
    requests: int | None
    credits: int | None
    last_request_at: datetime | None
    requests_24h: int
    errors_24h: int
    credits_24h: int


_JSON_COLUMNS = {"definition", "info", "input_data", "output_data", "metadata", "output", "data"}


def _row(record: asyncpg.Record | None) -> Row | None:
    if record is None:
        return None
    out = dict(record)
    for name in _JSON_COLUMNS & out.keys():
        if isinstance(out[name], str):
            out[name] = orjson.loads(out[name])
    return out


def _rows(records: list[asyncpg.Record]) -> list[Row]:
    return [r for r in (_row(x) for x in records) if r is not None]


def _one(kind: type[T], record: asyncpg.Record | None) -> T | None:
    return cast(T | None, _row(record))


def _many(kind: type[T], records: list[asyncpg.Record]) -> list[T]:
    return cast(list[T], _rows(records))


class ReadModel:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ping(self) -> bool:
        return bool(await self._pool.fetchval("SELECT 1"))

    # users
    async def user_by_key_hash(self, key_hash: str) -> UserRow | None:
        return _one(
            UserRow, await self._pool.fetchrow("SELECT * FROM users WHERE key_hash = $1", key_hash)
        )

    async def live_key(self, key_hash: str) -> KeyRow | None:
        """The key with this hash, unless revoked (an expired one is the caller's to refuse)."""
        return _one(
            KeyRow,
            await self._pool.fetchrow(
                "SELECT * FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
            ),
        )

    async def key(self, key_id: str) -> KeyRow | None:
        return _one(
            KeyRow, await self._pool.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
        )

    async def keys_of(self, user_id: str) -> list[KeyRow]:
        """The account's keys that are not revoked, oldest first."""
        return _many(
            KeyRow,
            await self._pool.fetch(
                """SELECT * FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL
                   ORDER BY created_at, key_id""",
                user_id,
            ),
        )

    async def user(self, user_id: str) -> UserRow | None:
        return _one(
            UserRow, await self._pool.fetchrow("SELECT * FROM users WHERE user_id = $1", user_id)
        )

    async def user_by_email(self, email: str) -> UserRow | None:
        return _one(
            UserRow,
            await self._pool.fetchrow(
                "SELECT * FROM users WHERE lower(email) = lower($1) LIMIT 1", email
            ),
        )

    # flows
    async def flow(self, flow_id: str) -> FlowRow | None:
        return _one(
            FlowRow, await self._pool.fetchrow("SELECT * FROM flows WHERE flow_id = $1", flow_id)
        )

    async def flows(self) -> list[FlowRow]:
        return _many(FlowRow, await self._pool.fetch("SELECT * FROM flows ORDER BY flow_id"))

    # agents
    async def agents(self, *, active_only: bool = False) -> list[AgentRow]:
        sql = "SELECT * FROM agents WHERE registered"
        if active_only:
            sql += " AND active"
        return _many(AgentRow, await self._pool.fetch(sql + " ORDER BY agent_id"))

    async def agents_of(self, owner: str, agent_ids: Sequence[str]) -> list[AgentRow]:
        """The registered agents among ``agent_ids`` that ``owner`` owns."""
        rows = await self._pool.fetch(
            "SELECT * FROM agents WHERE registered AND owner = $1 AND agent_id = ANY($2::text[])"
            " ORDER BY agent_id",
            owner,
            list(agent_ids),
        )
        return _many(AgentRow, rows)

    async def agent_entry(self, agent_id: str) -> AgentRow | None:
        """The catalogue entry even after deregistration (its owner keeps the id)."""
        return _one(
            AgentRow,
            await self._pool.fetchrow("SELECT * FROM agents WHERE agent_id = $1", agent_id),
        )

    async def agent(self, agent_id: str) -> AgentRow | None:
        return _one(
            AgentRow,
            await self._pool.fetchrow(
                "SELECT * FROM agents WHERE agent_id = $1 AND registered", agent_id
            ),
        )

    # executions
    async def execution(self, execution_id: str) -> ExecutionRow | None:
        return _one(
            ExecutionRow,
            await self._pool.fetchrow(
                "SELECT * FROM executions WHERE execution_id = $1", execution_id
            ),
        )

    async def nodes(self, execution_id: str) -> list[NodeRow]:
        return _many(
            NodeRow,
            await self._pool.fetch(
                """SELECT * FROM execution_nodes WHERE execution_id = $1
                   ORDER BY started_at NULLS LAST, node_id""",
                execution_id,
            ),
        )

    async def execution_flow(self, flow_id: str, flow_version: str) -> dict[str, Any] | None:
        """The definition an execution ran: as its start recorded it, else the catalogue's
        when that is still the same version (executions projected before it was recorded)."""
        value = await self._pool.fetchval(
            """SELECT definition FROM execution_flows WHERE flow_id = $1 AND flow_version = $2
               UNION ALL
               SELECT definition FROM flows WHERE flow_id = $1 AND flow_version = $2
               LIMIT 1""",
            flow_id,
            flow_version,
        )
        if value is None:
            return None
        return cast(dict[str, Any], orjson.loads(value) if isinstance(value, str) else value)

    async def questions(self, execution_id: str) -> dict[str, dict[str, Any]]:
        """Each node's last ``node_waiting_input`` (what it asked), by node id."""
        rows = await self._pool.fetch(
            """SELECT DISTINCT ON (data->>'node_id') data->>'node_id' AS node_id, data
               FROM execution_events
               WHERE execution_id = $1 AND type = 'execution.node_waiting_input'
               ORDER BY data->>'node_id', seq DESC""",
            execution_id,
        )
        return {r["node_id"]: d for r in _rows(rows) if isinstance(d := r["data"], dict)}

    async def execution_usage(self, execution_id: str) -> dict[str, Any] | None:
        """What its terminal event says the models used and the run was charged
        (``usage``, DESIGN §14); ``None`` when not ended or not metered."""
        value = await self._pool.fetchval(
            """SELECT data->'usage' FROM execution_events
               WHERE execution_id = $1 AND type IN
                 ('execution.completed', 'execution.failed', 'execution.cancelled')
               ORDER BY seq DESC LIMIT 1""",
            execution_id,
        )
        if isinstance(value, str):
            value = orjson.loads(value)
        return value if isinstance(value, dict) else None

    async def executions_page(
        self, f: ExecutionFilter, *, after: PageKey | None, limit: int, offset: int = 0
    ) -> tuple[list[ExecutionRow], int]:
        """A page of executions newest first (``created_at``, ``execution_id`` descending),
        after the ``after`` position, and how many match ``f`` in all.

        The statement holds only the conditions in use (no ``$1 IS NULL OR ...``): a
        prepared statement's generic plan of those cannot pick an index. Page and count run
        on two connections at once; the count is what a deep offset costs anyway."""
        sql, args = execution_page_sql(f, after=after, limit=limit, offset=offset)
        count_sql, count_args = execution_count_sql(f)
        rows, total = await asyncio.gather(
            self._pool.fetch(sql, *args), self._pool.fetchval(count_sql, *count_args)
        )
        return _many(ExecutionRow, rows), int(total)

    async def users_page(self, *, after: PageKey | None, limit: int) -> tuple[list[UserRow], int]:
        """Users newest first (``created_at``, ``user_id`` descending) after ``after``."""
        if after is None:
            page = self._pool.fetch(
                "SELECT * FROM users ORDER BY created_at DESC, user_id DESC LIMIT $1", limit
            )
        else:
            page = self._pool.fetch(
                """SELECT * FROM users WHERE (created_at, user_id) < ($1, $2)
                   ORDER BY created_at DESC, user_id DESC LIMIT $3""",
                after.created_at,
                after.id,
                limit,
            )
        rows, total = await asyncio.gather(page, self._pool.fetchval("SELECT count(*) FROM users"))
        return _many(UserRow, rows), int(total)

    async def events(
        self, execution_id: str, *, after_seq: int = -1, types: tuple[str, ...] = ()
    ) -> list[EventRow]:
        return _many(
            EventRow,
            await self._pool.fetch(
                """SELECT * FROM execution_events
                   WHERE execution_id = $1 AND seq > $2
                     AND (cardinality($3::text[]) = 0 OR type = ANY($3::text[]))
                   ORDER BY seq""",
                execution_id,
                after_seq,
                list(types),
            ),
        )

    async def status_counts(self, user_id: str | None = None) -> dict[str, int]:
        """Executions by status: every tenant's, or one user's."""
        if user_id is None:
            rows = await self._pool.fetch("SELECT status, count(*) AS n FROM executions GROUP BY 1")
        else:  # a query of its own: a generic plan of "$1 IS NULL OR ..." scans every row
            rows = await self._pool.fetch(
                "SELECT status, count(*) AS n FROM executions WHERE user_id = $1 GROUP BY 1",
                user_id,
            )
        return {r["status"]: int(r["n"]) for r in rows}

    async def average_duration_ms(self, user_id: str) -> float | None:
        """The mean time from start to end of a user's ended executions (``None`` before
        the first), from the times the read model recorded for their events."""
        value = await self._pool.fetchval(
            """SELECT avg(EXTRACT(EPOCH FROM completed_at - created_at) * 1000)
               FROM executions WHERE user_id = $1 AND completed_at IS NOT NULL""",
            user_id,
        )
        return float(value) if value is not None else None

    # usage
    async def usage(self, user_id: str) -> UsageRow:
        """Totals and the last 24 hourly buckets (the current hour and the 23 before it)."""
        row = await self._pool.fetchrow(
            """SELECT t.requests, c.credits, t.last_request_at,
                      COALESCE(d.requests, 0) AS requests_24h,
                      COALESCE(d.errors, 0) AS errors_24h,
                      COALESCE(c.credits_24h, 0) AS credits_24h
               FROM (SELECT $1::text AS user_id) AS me
               LEFT JOIN usage_totals AS t ON t.user_id = me.user_id
               LEFT JOIN (
                   SELECT user_id, sum(requests) AS requests, sum(errors) AS errors
                   FROM usage_hourly
                   WHERE user_id = $1 AND hour >= date_trunc('hour', now()) - interval '23 hours'
                   GROUP BY user_id
               ) AS d ON d.user_id = me.user_id
               LEFT JOIN (
                   -- what settles charged (not what was reserved): a failed run's refund
                   -- and a priced run's unused reservation are not "used"
                   SELECT user_id, sum(charged) AS credits,
                          sum(charged) FILTER (
                              WHERE settled_at >= date_trunc('hour', now()) - interval '23 hours'
                          ) AS credits_24h
                   FROM credits_charged WHERE user_id = $1 GROUP BY user_id
               ) AS c ON c.user_id = me.user_id""",
            user_id,
        )
        assert row is not None
        return cast(UsageRow, dict(row))


def _and(conditions: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(conditions) if conditions else ""


def like_prefix(prefix: str) -> str:
    """A ``LIKE`` pattern (``ESCAPE '\\'``) matching what starts with ``prefix``: ``_`` is an
    id character and a LIKE wildcard."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def execution_page_sql(
    f: ExecutionFilter, *, after: PageKey | None, limit: int, offset: int = 0
) -> tuple[str, list[Any]]:
    """The statement of :meth:`ReadModel.executions_page`'s page and its arguments (the
    bench EXPLAINs this very text)."""
    where, args = _execution_where(f)
    if after is not None:
        args += [after.created_at, after.id]
        where.append(f"(created_at, execution_id) < (${len(args) - 1}, ${len(args)})")
    args += [limit, offset]
    sql = (
        f"SELECT * FROM executions{_and(where)}"
        f" ORDER BY created_at DESC, execution_id DESC LIMIT ${len(args) - 1} OFFSET ${len(args)}"
    )
    return sql, args


def execution_count_sql(f: ExecutionFilter) -> tuple[str, list[Any]]:
    """How many executions match ``f`` (the answer's ``total``)."""
    where, args = _execution_where(f)
    return f"SELECT count(*) FROM executions{_and(where)}", args


def _execution_where(f: ExecutionFilter) -> tuple[list[str], list[Any]]:
    """The conditions of ``f`` and their arguments ($1...)."""
    where: list[str] = []
    args: list[Any] = []

    def add(condition: str, value: Any) -> None:
        args.append(value)
        where.append(condition.replace("$?", f"${len(args)}"))

    if f.user_id is not None:
        add("user_id = $?", f.user_id)
    if len(f.statuses) == 1:
        add("status = $?", f.statuses[0])
    elif f.statuses:
        add("status = ANY($?::text[])", list(f.statuses))
    if f.flow_id is not None:
        add("flow_id = $?", f.flow_id)
    if f.created_from is not None:
        add("created_at >= $?", f.created_from)
    if f.created_to is not None:
        add("created_at <= $?", f.created_to)
    if f.id_prefix is not None:
        add("execution_id LIKE $? ESCAPE '\\'", like_prefix(f.id_prefix))
    return where, args
