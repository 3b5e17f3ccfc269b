"""The gateway's own read model: five projections into its schema (docs/api.md, docs/operations.md).

* ``gw_users``      ← ``spine.auth.events``: user, key hash, balance, rate limit, the
  user's token totals, and the credits and tokens each execution was charged at its
  settle (``credits_charged``, for ``/usage``).
* ``gw_flows``      ← ``spine.flows``: the current definition of every flow.
* ``gw_agents``     ← ``spine.registry.events``: the agent catalogue.
* ``gw_executions`` ← ``spine.executions.events``: executions, their nodes, the
  per-execution event trail (``seq`` is the SSE id), the flow versions they ran and the
  feed of status changes (``execution_feed``, keyed by the event's partition and offset:
  see ``feed.py``).
* ``gw_usage``      ← ``spine.usage``: requests and credits per user and hour, and totals
  (the hourly rows are the rolled-up form that outlives the topic's 30-day retention).

Each runs in its own :class:`~spine_servicekit.projector.Projector`, so a read-your-writes
wait only involves the topic the write lands in. While applying, a projection records
*marks* (``("execution", id)`` → partition and next offset); a waiter then awaits the
projector having *committed* that offset, not merely seen it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import TopicPartition
from spine_contracts import (
    AgentDeregistered,
    AgentRegistered,
    AgentStatusChanged,
    CreditsAdded,
    CreditsRejected,
    CreditsReserved,
    CreditsSettled,
    ExecutionCancelled,
    ExecutionCommandRejected,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionQueued,
    ExecutionStarted,
    FlowDefined,
    FlowDeleted,
    InputReceived,
    KeyCreated,
    KeyRevoked,
    KeyRotated,
    LimitsSet,
    Message,
    NodeCompleted,
    NodeDispatched,
    NodeFailed,
    NodeSkipped,
    NodeWaitingAgent,
    NodeWaitingInput,
    ReservationWithdrawn,
    UsageRecorded,
    UserCreated,
    topics,
)
from spine_contracts.access import USER_SCOPES, primary_key_id
from spine_servicekit.projector import Incoming, Projection
from spine_servicekit.rebuild import ServiceProjections

from .audit import audit_projection
from .settings import GatewaySettings

Mark = tuple[TopicPartition, int]


class Marks:
    """Where (partition, next offset) the event a writer waits for was applied, and which
    event it was (a cancel ends in ``ExecutionCancelled`` or ``ExecutionCommandRejected``)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._marks: dict[tuple[str, str], tuple[Mark, Message | None]] = {}
        self._limit = limit

    def put(
        self, kind: str, key: str, item: Incoming, *, first: bool = False, keep: bool = False
    ) -> None:
        """Record where ``item`` lies; with ``first``, keep an earlier record of the key; with
        ``keep``, the event itself too (only outcomes are read back: an ``ExecutionStarted``
        carries the whole flow, and 100,000 of them held ~200 MB in a gateway)."""
        if first and (kind, key) in self._marks:
            return
        if len(self._marks) >= self._limit:  # bounded: the oldest half goes
            for old in list(self._marks)[: self._limit // 2]:
                del self._marks[old]
        mark = (TopicPartition(item.topic, item.partition), item.offset + 1)
        self._marks[(kind, key)] = (mark, item.message if keep else None)

    def get(self, kind: str, key: str) -> Mark | None:
        found = self._marks.get((kind, key))
        return found[0] if found is not None else None

    def message(self, kind: str, key: str) -> Message | None:
        found = self._marks.get((kind, key))
        return found[1] if found is not None else None


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _ts(item: Incoming) -> datetime:
    return item.message.occurred_at


# --- users -------------------------------------------------------------------------------

USERS_DDL = """
CREATE TABLE users (
    user_id      text PRIMARY KEY,
    email        text NOT NULL,
    name         text NOT NULL DEFAULT '',
    organization text NOT NULL DEFAULT '',
    rate_limit   int  NOT NULL,
    key_hash     text NOT NULL,
    balance      bigint NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE UNIQUE INDEX users_key_hash ON users (key_hash);
CREATE INDEX users_email ON users (lower(email));
"""
#: every key by id, the primary key of ``users/create`` included (backfilled from users);
#: admin keys belong to the ``system`` account, which has no users row
KEYS_DDL = """
CREATE TABLE api_keys (
    key_id     text PRIMARY KEY,
    user_id    text NOT NULL,
    key_hash   text NOT NULL,
    name       text NOT NULL DEFAULT '',
    scopes     text[] NOT NULL,
    role       text NOT NULL DEFAULT 'user',
    expires_at timestamptz,
    last4      text NOT NULL DEFAULT '',
    created_by text,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE UNIQUE INDEX api_keys_live_hash ON api_keys (key_hash) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_user ON api_keys (user_id, created_at);
INSERT INTO api_keys (key_id, user_id, key_hash, name, scopes, created_at)
SELECT 'key_' || left(encode(sha256(('primary:' || user_id)::bytea), 'hex'), 16), user_id,
       key_hash, 'primary', ARRAY['executions:run', 'executions:read', 'flows:write',
       'agents:write'], created_at
FROM users;
"""


_BALANCE_EVENTS = (
    CreditsAdded,
    CreditsReserved,
    CreditsRejected,
    ReservationWithdrawn,
    CreditsSettled,
)


#: a user's own limits (DESIGN §16); NULL: auth's default
LIMITS_DDL = """
ALTER TABLE users ADD COLUMN max_in_flight int, ADD COLUMN max_queued int;
"""
#: what each execution was charged when it settled, for the usage series (``GET /usage``);
#: an execution settles once (a repeat of its settle changes nothing)
CREDITS_DDL = """
CREATE TABLE credits_charged (
    execution_id text PRIMARY KEY,
    user_id      text NOT NULL,
    charged      bigint NOT NULL,
    settled_at   timestamptz NOT NULL
);
CREATE INDEX credits_charged_user ON credits_charged (user_id, settled_at);
CREATE INDEX credits_charged_at ON credits_charged (settled_at);
"""


#: One round trip for a batch's settles: the rows new to ``credits_charged`` (an execution
#: settles once) add their tokens to their users' totals, so a repeat adds nothing.
_CHARGED_INSERT = """
WITH new AS (
    INSERT INTO credits_charged (execution_id, user_id, charged, settled_at, input_tokens,
                                 output_tokens)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[],
                         $5::bigint[], $6::bigint[])
    ON CONFLICT (execution_id) DO NOTHING
    RETURNING user_id, input_tokens, output_tokens
)
UPDATE users AS u SET input_tokens = u.input_tokens + n.input_tokens,
    output_tokens = u.output_tokens + n.output_tokens
FROM (SELECT user_id, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
      FROM new GROUP BY user_id) AS n
WHERE u.user_id = n.user_id
"""

#: ``GET /users``: newest first, a keyset page
USERS_LIST_DDL = "CREATE INDEX users_page ON users (created_at DESC, user_id DESC);"
#: credits per token (docs/credits.md): a user's model tokens (``/users/me``) and each
#: settle's (``/usage``); settles from before these columns count 0 tokens
TOKENS_DDL = """
ALTER TABLE users ADD COLUMN IF NOT EXISTS input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS output_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE credits_charged ADD COLUMN IF NOT EXISTS input_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS output_tokens bigint NOT NULL DEFAULT 0;
"""


def users_projection(marks: Marks) -> Projection:
    """Balance events carry the balance after them, so a batch's run of them for one user
    is one update (the last); every execution moves a balance twice. No event carries a
    user's token totals: a settle adds its tokens when its ``credits_charged`` row is new."""

    async def apply(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
        balances: dict[str, tuple[int, datetime]] = {}
        charged: list[tuple[str, str, int, datetime, int, int]] = []

        async def flush() -> None:
            if balances:
                await conn.executemany(
                    "UPDATE users SET balance = $2, updated_at = $3 WHERE user_id = $1",
                    [(uid, balance, at) for uid, (balance, at) in balances.items()],
                )
                balances.clear()

        for item in batch:
            m = item.message
            if isinstance(m, _BALANCE_EVENTS):
                balances[m.data.user_id] = (m.data.balance, _ts(item))
                if isinstance(m, CreditsReserved):  # an execute's answer shows the balance
                    marks.put("reserved", m.data.execution_id, item)
                elif isinstance(m, CreditsSettled):
                    settled = m.data
                    charged.append(
                        (
                            settled.execution_id,
                            settled.user_id,
                            settled.charged,
                            _ts(item),
                            settled.input_tokens,
                            settled.output_tokens,
                        )
                    )
                continue
            await flush()  # keep the order of every other statement
            if isinstance(m, UserCreated):
                d = m.data
                await conn.execute(
                    """INSERT INTO users (user_id, email, name, organization, rate_limit,
                           key_hash, balance, created_at, updated_at, max_in_flight, max_queued)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10)
                       ON CONFLICT (user_id) DO NOTHING""",
                    d.user_id,
                    d.email,
                    d.name,
                    d.organization,
                    d.rate_limit,
                    d.key_hash,
                    d.balance,
                    _ts(item),
                    d.max_in_flight,
                    d.max_queued,
                )
                await conn.execute(
                    """INSERT INTO api_keys (key_id, user_id, key_hash, name, scopes, last4,
                           created_by, created_at)
                       VALUES ($1, $2, $3, 'primary', $4, $5, $6, $7)
                       ON CONFLICT (key_id) DO NOTHING""",
                    primary_key_id(d.user_id),
                    d.user_id,
                    d.key_hash,
                    list(USER_SCOPES),
                    d.last4,
                    m.actor,
                    _ts(item),
                )
                marks.put("user", d.user_id, item)
            elif isinstance(m, KeyRotated):
                rotated = m.data
                key_id = rotated.key_id or primary_key_id(rotated.user_id)
                if key_id == primary_key_id(rotated.user_id):
                    await conn.execute(
                        "UPDATE users SET key_hash = $2, updated_at = $3 WHERE user_id = $1",
                        rotated.user_id,
                        rotated.key_hash,
                        _ts(item),
                    )
                await conn.execute(
                    """UPDATE api_keys SET key_hash = $2,
                           last4 = CASE WHEN $3 = '' THEN last4 ELSE $3 END
                       WHERE key_id = $1""",
                    key_id,
                    rotated.key_hash,
                    rotated.last4,
                )
                marks.put("key", key_id, item)
            elif isinstance(m, KeyCreated):
                new = m.data
                await conn.execute(
                    """INSERT INTO api_keys (key_id, user_id, key_hash, name, scopes, role,
                           expires_at, last4, created_by, created_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                       ON CONFLICT (key_id) DO NOTHING""",
                    new.key_id,
                    new.user_id,
                    new.key_hash,
                    new.name,
                    list(new.scopes),
                    new.role,
                    new.expires_at,
                    new.last4,
                    m.actor,
                    _ts(item),
                )
                marks.put("key", new.key_id, item)
            elif isinstance(m, LimitsSet):
                await conn.execute(
                    """UPDATE users SET max_in_flight = $2, max_queued = $3, updated_at = $4
                       WHERE user_id = $1""",
                    m.data.user_id,
                    m.data.max_in_flight,
                    m.data.max_queued,
                    _ts(item),
                )
                marks.put("limits", m.data.user_id, item)
            elif isinstance(m, KeyRevoked):
                await conn.execute(
                    "UPDATE api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL",
                    m.data.key_id,
                    _ts(item),
                )
                marks.put("key_revoked", m.data.key_id, item)
        await flush()
        if charged:
            await conn.execute(
                _CHARGED_INSERT, *(list(column) for column in zip(*charged, strict=True))
            )

    return Projection(
        "gw_users",
        (topics.AUTH_EVENTS,),
        apply,
        migrations=(USERS_DDL, KEYS_DDL, LIMITS_DDL, USERS_LIST_DDL, CREDITS_DDL, TOKENS_DDL),
    )


# --- flows -------------------------------------------------------------------------------

FLOWS_DDL = """
CREATE TABLE flows (
    flow_id      text PRIMARY KEY,
    flow_version text NOT NULL,
    definition   jsonb NOT NULL,
    source       text NOT NULL,
    source_path  text,
    updated_at   timestamptz NOT NULL
);
"""
FLOWS_OWNER_DDL = "ALTER TABLE flows ADD COLUMN owner text NOT NULL DEFAULT 'system';"


def flows_projection(marks: Marks) -> Projection:
    async def apply(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
        for item in batch:
            m = item.message
            if isinstance(m, FlowDefined):
                d = m.data
                await conn.execute(
                    """INSERT INTO flows (flow_id, flow_version, definition, source,
                           source_path, updated_at, owner)
                       VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7)
                       ON CONFLICT (flow_id) DO UPDATE SET flow_version = EXCLUDED.flow_version,
                           definition = EXCLUDED.definition, source = EXCLUDED.source,
                           source_path = EXCLUDED.source_path, updated_at = EXCLUDED.updated_at,
                           owner = EXCLUDED.owner""",
                    d.flow_id,
                    d.flow_version,
                    _json(d.definition.model_dump(mode="json")),
                    d.source,
                    d.source_path,
                    _ts(item),
                    d.owner,
                )
            elif isinstance(m, FlowDeleted):
                await conn.execute("DELETE FROM flows WHERE flow_id = $1", m.data.flow_id)
            else:
                continue
            if m.causation_id:
                marks.put("flow_cmd", m.causation_id, item)

    return Projection("gw_flows", (topics.FLOWS,), apply, migrations=(FLOWS_DDL, FLOWS_OWNER_DDL))


# --- agents ------------------------------------------------------------------------------

AGENTS_DDL = """
CREATE TABLE agents (
    agent_id   text PRIMARY KEY,
    info       jsonb NOT NULL,
    registered boolean NOT NULL,
    active     boolean NOT NULL,
    last_seen  timestamptz,
    updated_at timestamptz NOT NULL
);
"""
AGENTS_OWNER_DDL = "ALTER TABLE agents ADD COLUMN owner text NOT NULL DEFAULT 'system';"


def agents_projection(marks: Marks) -> Projection:
    async def apply(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
        for item in batch:
            m = item.message
            if isinstance(m, AgentRegistered | AgentStatusChanged | AgentDeregistered):
                d = m.data
                await conn.execute(
                    """INSERT INTO agents (agent_id, info, registered, active, last_seen,
                           updated_at, owner)
                       VALUES ($1, $2::jsonb, $3, $4, $5, $6, $7)
                       ON CONFLICT (agent_id) DO UPDATE SET info = EXCLUDED.info,
                           registered = EXCLUDED.registered, active = EXCLUDED.active,
                           last_seen = EXCLUDED.last_seen, updated_at = EXCLUDED.updated_at,
                           owner = EXCLUDED.owner""",
                    d.agent.agent_id,
                    _json(d.agent.model_dump(mode="json")),
                    d.registered,
                    d.active,
                    d.last_seen,
                    _ts(item),
                    d.owner,
                )
                if m.causation_id:
                    marks.put("agent_cmd", m.causation_id, item)

    return Projection(
        "gw_agents", (topics.REGISTRY_EVENTS,), apply, migrations=(AGENTS_DDL, AGENTS_OWNER_DDL)
    )


# --- executions --------------------------------------------------------------------------

EXECUTIONS_DDL = """
CREATE TABLE executions (
    execution_id  text PRIMARY KEY,
    user_id       text NOT NULL,
    flow_id       text NOT NULL,
    flow_version  text NOT NULL,
    status        text NOT NULL,
    input_data    jsonb NOT NULL,
    output_data   jsonb,
    error_message text,
    metadata      jsonb NOT NULL,
    last_seq      int  NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    completed_at  timestamptz
);
CREATE INDEX executions_user ON executions (user_id, created_at DESC);
CREATE TABLE execution_nodes (
    execution_id  text NOT NULL,
    node_id       text NOT NULL,
    status        text NOT NULL,
    agent_id      text,
    attempt       int  NOT NULL DEFAULT 0,
    output        jsonb,
    error_message text,
    started_at    timestamptz,
    completed_at  timestamptz,
    PRIMARY KEY (execution_id, node_id)
);
CREATE TABLE execution_events (
    execution_id text NOT NULL,
    seq          int  NOT NULL,
    type         text NOT NULL,
    data         jsonb NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (execution_id, seq)
);
"""

#: the flow each execution ran, once per version (an execution's detail draws its graph and
#: derives its nodes' inputs from it; ``flows`` holds only the current definition)
EXECUTION_FLOWS_DDL = """
CREATE TABLE execution_flows (
    flow_id      text NOT NULL,
    flow_version text NOT NULL,
    definition   jsonb NOT NULL,
    PRIMARY KEY (flow_id, flow_version)
);
"""

#: ``GET /executions`` newest first by keyset (``(created_at, execution_id) < cursor``): a
#: user's list, the admin's, and each with the equality filters (status, flow); an id prefix
#: by ``LIKE 'p%'`` whatever the collation. Status is in two of them, so a status change is
#: no HOT update (a few per execution; the many ``updated_at``/``last_seq`` touches stay HOT).
EXECUTIONS_LIST_DDL = """
CREATE INDEX executions_user_page ON executions (user_id, created_at DESC, execution_id DESC);
DROP INDEX executions_user;
CREATE INDEX executions_page ON executions (created_at DESC, execution_id DESC);
CREATE INDEX executions_user_status_page
    ON executions (user_id, status, created_at DESC, execution_id DESC);
CREATE INDEX executions_status_page ON executions (status, created_at DESC, execution_id DESC);
CREATE INDEX executions_user_flow_page
    ON executions (user_id, flow_id, created_at DESC, execution_id DESC);
CREATE INDEX executions_id_prefix ON executions (execution_id text_pattern_ops);
"""

#: The feed of status changes (``GET /executions/stream``, ``feed.py``): one row per event
#: that changes an execution's status, keyed by where that event lies in the topic. The key
#: is the event's own, not a counter: a replay writes the same rows, a rebuild makes them
#: equal row for row (a sequence would differ by its gaps and by how partitions interleave),
#: and a client's cursor stays valid across a rebuild's swap. Per partition, rows commit in
#: offset order, so "after offset o" never misses a row that commits later.
FEED_DDL = """
CREATE TABLE execution_feed (
    kafka_partition int NOT NULL,
    kafka_offset    bigint NOT NULL,
    user_id         text NOT NULL,
    execution_id    text NOT NULL,
    flow_id         text NOT NULL,
    status          text NOT NULL,
    type            text NOT NULL,
    seq             int NOT NULL,
    occurred_at     timestamptz NOT NULL,
    PRIMARY KEY (kafka_partition, kafka_offset)
);
CREATE INDEX execution_feed_user ON execution_feed (user_id, kafka_partition, kafka_offset);
CREATE INDEX executions_user_completed ON executions (user_id, completed_at)
    WHERE completed_at IS NOT NULL;
"""

#: the rows of a batch's status changes; user and flow come from the execution's row, and an
#: execution that had already ended (before this batch) gets none: a late event reopens nothing
_FEED_INSERT = """
INSERT INTO execution_feed (kafka_partition, kafka_offset, user_id, execution_id, flow_id,
                            status, type, seq, occurred_at)
SELECT u.p, u.o, e.user_id, u.e, e.flow_id, u.s, u.t, u.q, u.at
FROM unnest($1::int[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::int[],
            $7::timestamptz[]) AS u(p, o, e, s, t, q, at)
JOIN executions AS e ON e.execution_id = u.e
WHERE e.status NOT IN ('completed', 'failed', 'cancelled')
ON CONFLICT DO NOTHING
"""

#: what a CancelExecution or ProvideInput ends in first
_COMMAND_OUTCOMES = (InputReceived, ExecutionCancelled, ExecutionCommandRejected)

_TERMINAL_EVENTS = {
    ExecutionCompleted: "completed",
    ExecutionFailed: "failed",
    ExecutionCancelled: "cancelled",
}


#: One statement for every node event, so a batch's node rows go in one round trip
#: (``executemany``, in event order). The flags say which columns the event sets; on the
#: first sight of a node the others take their defaults.
_NODE_UPSERT = """
INSERT INTO execution_nodes AS n (execution_id, node_id, started_at, status, agent_id, attempt,
                                  output, error_message, completed_at)
VALUES ($1, $2, $3, $4, $5, COALESCE($6, 0), $7::jsonb, $8, $9)
ON CONFLICT (execution_id, node_id) DO UPDATE SET
    status = EXCLUDED.status,
    agent_id = CASE WHEN $10 THEN EXCLUDED.agent_id ELSE n.agent_id END,
    attempt = CASE WHEN $6::int IS NOT NULL THEN EXCLUDED.attempt ELSE n.attempt END,
    output = CASE WHEN $11 THEN EXCLUDED.output ELSE n.output END,
    error_message = CASE WHEN $12 THEN EXCLUDED.error_message ELSE n.error_message END,
    completed_at = CASE WHEN $13 THEN EXCLUDED.completed_at ELSE n.completed_at END
"""

#: One statement for every status change (executemany, in event order); $5 says whether it
#: ends the execution, a null output or error message leaves the column as it is.
_STATUS_UPDATE = """
UPDATE executions SET status = $2, updated_at = $3, last_seq = GREATEST(last_seq, $4),
    completed_at = CASE WHEN $5 THEN $3 ELSE completed_at END,
    output_data = COALESCE($6::jsonb, output_data),
    error_message = COALESCE($7, error_message)
WHERE execution_id = $1 AND status NOT IN ('completed', 'failed', 'cancelled')
"""

# queued first, then started: the start of a queued execution moves it to running, once.
# $10: the flow's definition the first time the batch sees its version (else null), kept
# in the same round trip.
_STARTED_INSERT = """
WITH flow AS (
    INSERT INTO execution_flows (flow_id, flow_version, definition)
    SELECT $3, $4, $10::jsonb WHERE $10::jsonb IS NOT NULL
    ON CONFLICT DO NOTHING
)
INSERT INTO executions (execution_id, user_id, flow_id, flow_version, status, input_data,
                        metadata, last_seq, created_at, updated_at)
VALUES ($1, $2, $3, $4, $9, $5::jsonb, $6::jsonb, $7, $8, $8)
ON CONFLICT (execution_id) DO UPDATE SET status = EXCLUDED.status,
    last_seq = GREATEST(executions.last_seq, EXCLUDED.last_seq),
    updated_at = GREATEST(executions.updated_at, EXCLUDED.updated_at)
WHERE executions.status = 'queued' AND EXCLUDED.status = 'running'
  AND executions.last_seq < EXCLUDED.last_seq
"""

#: An ended execution's unfinished nodes are cancelled: the orchestrator stops them all at
#: the terminal event (``_stop_in_flight``) without an event per node.
_NODES_ENDED = """
UPDATE execution_nodes SET status = 'cancelled', completed_at = $2
WHERE execution_id = $1 AND status NOT IN ('completed', 'failed', 'skipped', 'cancelled')
"""

_UNSET: Any = object()


def _node(
    eid: str,
    node_id: str,
    status: str,
    at: datetime,
    *,
    agent_id: Any = _UNSET,
    attempt: int | None = None,
    output: Any = _UNSET,
    error_message: Any = _UNSET,
    completed_at: Any = _UNSET,
) -> tuple[Any, ...]:
    """The ``_NODE_UPSERT`` arguments of one node event."""

    def value(v: Any) -> Any:
        return None if v is _UNSET else v

    return (
        eid,
        node_id,
        at,
        status,
        value(agent_id),
        attempt,
        value(output),
        value(error_message),
        value(completed_at),
        agent_id is not _UNSET,
        output is not _UNSET,
        error_message is not _UNSET,
        completed_at is not _UNSET,
    )


def _agent(agent_id: str | None) -> dict[str, Any]:
    """The ``_node`` argument that sets the row's agent when the event names one."""
    return {} if agent_id is None else {"agent_id": agent_id}


def executions_projection(marks: Marks) -> Projection:
    """Per batch: the trail in one statement, then the rows that change in event order; the
    executions that only got newer (no status change) are touched once at the end. Round
    trips, not rows, bound a projection's throughput, and every write waits for this one."""

    async def apply(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
        new = {
            (r["execution_id"], r["seq"])
            for r in await conn.fetch(
                """INSERT INTO execution_events (execution_id, seq, type, data, occurred_at)
                   SELECT e, s, t, d::jsonb, o
                   FROM unnest($1::text[], $2::int[], $3::text[], $4::text[],
                               $5::timestamptz[]) AS u(e, s, t, d, o)
                   ON CONFLICT DO NOTHING RETURNING execution_id, seq""",
                [item.message.data.execution_id for item in batch],  # type: ignore[attr-defined]
                [item.message.data.seq for item in batch],  # type: ignore[attr-defined]
                [item.message.type for item in batch],
                [item.message.data.model_dump_json() for item in batch],
                [_ts(item) for item in batch],
            )
        }
        touched: dict[str, tuple[datetime, int]] = {}
        nodes: list[tuple[Any, ...]] = []
        started: list[tuple[Any, ...]] = []
        statuses: list[tuple[Any, ...]] = []
        nodes_ended: list[tuple[str, datetime]] = []
        flows_seen: set[tuple[str, str]] = set()
        feed: list[tuple[Any, ...]] = []
        ended: set[str] = set()  # in this batch: what follows its end changes no status
        for item in batch:
            m = item.message
            d: Any = m.data
            eid: str = d.execution_id
            at = _ts(item)
            if isinstance(m, ExecutionStarted | ExecutionQueued):
                marks.put("execution", eid, item)
            elif m.causation_id and isinstance(m, _COMMAND_OUTCOMES):
                # the first event a gateway's cancel or input caused is its outcome
                marks.put("execution_cmd", m.causation_id, item, first=True, keep=True)
            if (eid, d.seq) not in new:
                continue  # the same seq again: already applied
            new.discard((eid, d.seq))  # (and a repeat within this batch is one too)
            if isinstance(m, ExecutionStarted | ExecutionQueued) and eid not in ended:
                feed.append(
                    (
                        item.partition,
                        item.offset,
                        eid,
                        "queued" if isinstance(m, ExecutionQueued) else "running",
                        m.type,
                        d.seq,
                        at,
                    )
                )
            if isinstance(m, ExecutionStarted | ExecutionQueued):
                version = (d.flow_id, d.flow_version)
                flow = None if version in flows_seen else _json(d.flow.model_dump(mode="json"))
                flows_seen.add(version)
                started.append(
                    (
                        eid,
                        d.user_id,
                        d.flow_id,
                        d.flow_version,
                        _json(d.input_data),
                        _json(d.metadata),
                        d.seq,
                        at,
                        "queued" if isinstance(m, ExecutionQueued) else "running",
                        flow,
                    )
                )
                continue
            status: str | None = None
            output: str | None = None
            error: str | None = None
            if isinstance(m, NodeWaitingAgent):
                nodes.append(_node(eid, d.node_id, "waiting_agent", at, agent_id=d.agent_id))
            elif isinstance(m, NodeDispatched):
                nodes.append(
                    _node(eid, d.node_id, "running", at, agent_id=d.agent_id, attempt=d.attempt)
                )
            elif isinstance(m, NodeCompleted):
                nodes.append(
                    _node(
                        eid,
                        d.node_id,
                        "completed",
                        at,
                        output=_json(d.output),
                        completed_at=at,
                        attempt=d.attempt,
                        **_agent(d.agent_id),
                    )
                )
            elif isinstance(m, NodeFailed):
                nodes.append(
                    _node(
                        eid,
                        d.node_id,
                        "retrying" if d.will_retry else "failed",
                        at,
                        error_message=d.error_message,
                        attempt=d.attempt,
                        completed_at=None if d.will_retry else at,
                        **_agent(d.agent_id),  # a node failed before dispatch names it only here
                    )
                )
            elif isinstance(m, NodeSkipped):
                nodes.append(_node(eid, d.node_id, "skipped", at, completed_at=at))
            elif isinstance(m, NodeWaitingInput):
                nodes.append(_node(eid, d.node_id, "waiting_input", at))
                status = "waiting_input"
            elif isinstance(m, InputReceived):
                nodes.append(_node(eid, d.node_id, "running", at))
                status = "running"
            elif type(m) in _TERMINAL_EVENTS:
                status = _TERMINAL_EVENTS[type(m)]
                if isinstance(m, ExecutionCompleted):
                    output = _json(d.output_data)
                elif isinstance(m, ExecutionFailed):
                    error = d.error_message
                    nodes_ended.append((eid, at))
                elif isinstance(m, ExecutionCancelled):
                    error = d.reason
                    nodes_ended.append((eid, at))
            elif isinstance(m, ExecutionCommandRejected):
                pass
            if status is not None:
                # a terminal status is final; a late event never reopens it
                terminal = type(m) in _TERMINAL_EVENTS
                statuses.append((eid, status, at, d.seq, terminal, output, error))
                if eid not in ended:
                    feed.append((item.partition, item.offset, eid, status, m.type, d.seq, at))
                if terminal:
                    ended.add(eid)
            else:
                last = touched.get(eid)
                touched[eid] = (max(at, last[0]), max(d.seq, last[1])) if last else (at, d.seq)
        # An execution's start precedes its status changes in the batch, and each statement
        # keeps event order: the rows of applying the events one by one, in 2-4 round trips.
        if started:
            await conn.executemany(_STARTED_INSERT, started)
        if feed:  # after the starts (it reads their rows), before the ends (it reads status)
            await conn.execute(_FEED_INSERT, *(list(column) for column in zip(*feed, strict=True)))
        if statuses:
            await conn.executemany(_STATUS_UPDATE, statuses)
        if nodes:  # node rows are their own table: only their order among themselves counts
            await conn.executemany(_NODE_UPSERT, nodes)
        if nodes_ended:  # after the nodes: a terminal event is its execution's last node change
            await conn.executemany(_NODES_ENDED, nodes_ended)
        if touched:
            await conn.executemany(
                """UPDATE executions SET updated_at = GREATEST(updated_at, $2),
                       last_seq = GREATEST(last_seq, $3)
                   WHERE execution_id = $1""",
                [(eid, at, seq) for eid, (at, seq) in touched.items()],
            )

    # An event applied again is recognised by its (execution_id, seq) in the trail, so the
    # table of applied message ids (the largest of the schema) would only repeat it (G6).
    return Projection(
        "gw_executions",
        (topics.EXECUTION_EVENTS,),
        apply,
        migrations=(EXECUTIONS_DDL, EXECUTION_FLOWS_DDL, EXECUTIONS_LIST_DDL, FEED_DDL),
        dedupe=False,
    )


# --- usage -------------------------------------------------------------------------------

USAGE_DDL = """
CREATE TABLE usage_hourly (
    user_id     text NOT NULL,
    hour        timestamptz NOT NULL,
    requests    bigint NOT NULL,
    errors      bigint NOT NULL,
    credits     bigint NOT NULL,
    duration_ms double precision NOT NULL,
    PRIMARY KEY (user_id, hour)
);
CREATE TABLE usage_totals (
    user_id         text PRIMARY KEY,
    requests        bigint NOT NULL,
    errors          bigint NOT NULL,
    credits         bigint NOT NULL,
    first_request_at timestamptz NOT NULL,
    last_request_at  timestamptz NOT NULL
);
"""


def usage_projection() -> Projection:
    """Folds ``UsageRecorded`` into hourly and total counters; the projector applies each
    offset exactly once, so the increments neither double nor go missing."""

    async def apply(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
        hourly: dict[tuple[str, datetime], list[float]] = {}
        totals: dict[str, list[Any]] = {}
        for item in batch:
            m = item.message
            if not isinstance(m, UsageRecorded):
                continue
            d = m.data
            at = m.occurred_at
            error = 1 if d.status_code >= 400 else 0
            hour = at.replace(minute=0, second=0, microsecond=0)
            h = hourly.setdefault((d.user_id, hour), [0, 0, 0, 0.0])
            h[0] += 1
            h[1] += error
            h[2] += d.credits
            h[3] += d.duration_ms
            t = totals.setdefault(d.user_id, [0, 0, 0, at, at])
            t[0] += 1
            t[1] += error
            t[2] += d.credits
            t[3] = min(t[3], at)
            t[4] = max(t[4], at)
        if hourly:
            await conn.executemany(
                """INSERT INTO usage_hourly AS u (user_id, hour, requests, errors, credits,
                       duration_ms)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (user_id, hour) DO UPDATE SET
                       requests = u.requests + EXCLUDED.requests,
                       errors = u.errors + EXCLUDED.errors,
                       credits = u.credits + EXCLUDED.credits,
                       duration_ms = u.duration_ms + EXCLUDED.duration_ms""",
                [(u, h, int(v[0]), int(v[1]), int(v[2]), v[3]) for (u, h), v in hourly.items()],
            )
        if totals:
            await conn.executemany(
                """INSERT INTO usage_totals AS t (user_id, requests, errors, credits,
                       first_request_at, last_request_at)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (user_id) DO UPDATE SET
                       requests = t.requests + EXCLUDED.requests,
                       errors = t.errors + EXCLUDED.errors,
                       credits = t.credits + EXCLUDED.credits,
                       first_request_at = LEAST(t.first_request_at, EXCLUDED.first_request_at),
                       last_request_at = GREATEST(t.last_request_at, EXCLUDED.last_request_at)""",
                [(u, v[0], v[1], v[2], v[3], v[4]) for u, v in totals.items()],
            )

    return Projection("gw_usage", (topics.USAGE,), apply, migrations=(USAGE_DDL,))


def rebuild_projections() -> tuple[Projection, ...]:
    """Every projection kept in the gateway's schema, as ``make rebuild`` replays them (the
    marks of a rebuild are its own and unused); keep in step with the app's wiring."""
    marks = Marks()
    return (
        users_projection(marks),
        flows_projection(marks),
        agents_projection(marks),
        executions_projection(marks),
        usage_projection(),
        audit_projection(),
    )


#: what ``make rebuild`` finds under the ``ai_spine.projections`` entry points (pyproject.toml)
REBUILD = ServiceProjections(rebuild_projections, GatewaySettings)
