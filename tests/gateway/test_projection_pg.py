"""The gateway's executions and usage projections on a real PostgreSQL schema: the batched
statements give the same rows whatever the batch boundaries, a repeat changes nothing, and
a command's first outcome is marked."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from crash.helpers import execution_trail
from spine_contracts import (
    CancelExecution,
    CreditsReserved,
    CreditsSettled,
    ExecutionCancelled,
    ExecutionCommandRejected,
    ExecutionFailed,
    ExecutionStarted,
    FlowDefinition,
    InputReceived,
    KeyCreated,
    KeyRevoked,
    KeyRotated,
    Message,
    NodeDispatched,
    NodeFailed,
    NodeWaitingInput,
    UsageRecorded,
    UserCreated,
)
from spine_contracts.access import USER_SCOPES, primary_key_id
from spine_gateway.adapters.postgres import ReadModel
from spine_gateway.projection import (
    CREDITS_DDL,
    EXECUTION_FLOWS_DDL,
    EXECUTIONS_DDL,
    FEED_DDL,
    KEYS_DDL,
    LIMITS_DDL,
    TOKENS_DDL,
    USAGE_DDL,
    USERS_DDL,
    Marks,
    executions_projection,
    usage_projection,
    users_projection,
)
from spine_servicekit.postgres import create_pool
from spine_servicekit.projector import Incoming

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
FLOW = FlowDefinition.model_validate(
    {"flow_id": "f", "nodes": [{"id": "a", "agent_id": "echo"}, {"id": "b", "agent_id": "echo"}]}
)


def _at(seconds: float) -> dict[str, Any]:
    return {"occurred_at": T0 + timedelta(seconds=seconds)}


def _events(eid: str) -> list[Message]:
    return execution_trail(eid, T0)


def _incoming(messages: Sequence[Message]) -> list[Incoming]:
    return [
        Incoming("events", 0, offset, None, 0, message) for offset, message in enumerate(messages)
    ]


@pytest_asyncio.fixture(loop_scope="session")
async def conn(database_url: str, pg_schema: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    await connection.execute(f'SET search_path TO "{pg_schema}"')
    await connection.execute(EXECUTIONS_DDL)
    await connection.execute(EXECUTION_FLOWS_DDL)
    await connection.execute(FEED_DDL)
    await connection.execute(USAGE_DDL)
    await connection.execute(USERS_DDL)
    await connection.execute(KEYS_DDL)
    await connection.execute(LIMITS_DDL)
    await connection.execute(CREDITS_DDL)
    await connection.execute(TOKENS_DDL)
    try:
        yield connection
    finally:
        await connection.close()


async def _apply(conn: asyncpg.Connection, marks: Marks, items: list[Incoming], size: int) -> None:
    apply = executions_projection(marks).apply
    for i in range(0, len(items), size):
        async with conn.transaction():
            await apply(conn, items[i : i + size])


async def _snapshot(conn: asyncpg.Connection, eid: str) -> dict[str, Any]:
    ex = await conn.fetchrow("SELECT * FROM executions WHERE execution_id = $1", eid)
    nodes = await conn.fetch(
        "SELECT * FROM execution_nodes WHERE execution_id = $1 ORDER BY node_id", eid
    )
    trail = await conn.fetch(
        "SELECT seq, type FROM execution_events WHERE execution_id = $1 ORDER BY seq", eid
    )
    strip = {"execution_id"}
    return {
        "execution": {k: v for k, v in dict(ex).items() if k not in strip},
        "nodes": [{k: v for k, v in dict(n).items() if k not in strip} for n in nodes],
        "trail": [tuple(r) for r in trail],
    }


async def test_batched_apply_gives_the_same_rows_whatever_the_batches(
    conn: asyncpg.Connection,
) -> None:
    snapshots = []
    for size in (1, 3, 100):
        eid = f"e-{uuid.uuid4().hex[:8]}"
        events = _events(eid)
        marks = Marks()
        items = _incoming(events)
        await _apply(conn, marks, items + items[2:6], size)  # with repeats: no-ops
        snapshots.append(await _snapshot(conn, eid))
    assert snapshots[0] == snapshots[1] == snapshots[2]
    snap = snapshots[0]
    ex = snap["execution"]
    assert ex["status"] == "completed" and ex["last_seq"] == 10
    assert ex["created_at"] == T0 and ex["updated_at"] == T0 + timedelta(seconds=9)
    assert ex["completed_at"] == T0 + timedelta(seconds=8)
    a, b = snap["nodes"]
    assert (a["status"], a["attempt"], a["agent_id"]) == ("completed", 2, "echo")
    assert a["error_message"] == "boom" and a["completed_at"] == T0 + timedelta(seconds=4)
    assert a["started_at"] == T0 + timedelta(seconds=1)
    assert (b["status"], b["attempt"], b["agent_id"]) == ("completed", 1, None)
    assert [s for s, _ in snap["trail"]] == list(range(1, 11))


async def test_a_commands_first_outcome_is_marked(conn: asyncpg.Connection) -> None:
    eid = f"e-{uuid.uuid4().hex[:8]}"
    events = _events(eid)
    marks = Marks()
    await _apply(conn, marks, _incoming(events), 4)
    received, rejected = events[6], events[9]
    assert isinstance(marks.message("execution_cmd", str(received.causation_id)), InputReceived)
    got = marks.message("execution_cmd", str(rejected.causation_id))
    assert isinstance(got, ExecutionCommandRejected) and got.data.reason == "already completed"
    assert marks.get("execution", eid) is not None
    cancelled = ExecutionCancelled.build(
        cause=CancelExecution.build(execution_id=eid), execution_id=eid, seq=11, reason="late"
    )
    await _apply(conn, marks, _incoming([cancelled]), 1)
    ex = await conn.fetchrow("SELECT status FROM executions WHERE execution_id = $1", eid)
    assert ex["status"] == "completed"  # a terminal status is final


async def test_an_ended_execution_leaves_no_node_running_and_keeps_its_flow(
    conn: asyncpg.Connection,
) -> None:
    """The orchestrator stops every unfinished node at the terminal event without an event
    per node: the rows say so; a node failed before dispatch keeps the agent its event
    names; the flow each execution ran is kept once per version."""
    for terminal in ("cancelled", "failed"):
        for size in (1, 100):
            eid = f"e-{uuid.uuid4().hex[:8]}"
            common: dict[str, Any] = {"execution_id": eid}
            three = FlowDefinition.model_validate(
                {
                    "flow_id": "f3",
                    "nodes": [
                        {"id": "a", "agent_id": "echo"},
                        {"id": "b", "agent_id": "echo"},
                        {"id": "c", "agent_id": "ghost"},
                    ],
                }
            )
            start = ExecutionStarted.build(
                **common, seq=1, user_id="u", flow_id="f3", flow_version="v3", flow=three
            )
            end: Message = (
                ExecutionCancelled.build(**common, seq=6, reason="stop")
                if terminal == "cancelled"
                else ExecutionFailed.build(**common, seq=6, error_message="c failed", node_id="c")
            )
            events: list[Message] = [
                start,
                NodeDispatched.build(
                    **common, seq=2, node_id="a", attempt=1, agent_id="echo", task_id="t1"
                ),
                NodeDispatched.build(
                    **common, seq=3, node_id="b", attempt=1, agent_id="echo", task_id="t2"
                ),
                NodeWaitingInput.build(
                    **common, seq=4, node_id="b", attempt=1, turn=1, question="?"
                ),
                NodeFailed.build(
                    **common,
                    seq=5,
                    node_id="c",
                    attempt=0,
                    agent_id="ghost",
                    error_message="agent 'ghost' is unknown",
                ),
                end,
            ]
            timed = [m.model_copy(update=_at(i)) for i, m in enumerate(events)]
            await _apply(conn, Marks(), _incoming(timed), size)
            nodes = {n["node_id"]: n for n in (await _snapshot(conn, eid))["nodes"]}
            assert {k: n["status"] for k, n in nodes.items()} == {
                "a": "cancelled",
                "b": "cancelled",
                "c": "failed",
            }
            assert nodes["a"]["completed_at"] == T0 + timedelta(seconds=5)
            assert (nodes["c"]["agent_id"], nodes["c"]["attempt"]) == ("ghost", 0)
    stored = await conn.fetch(
        "SELECT definition FROM execution_flows WHERE flow_id = 'f3' AND flow_version = 'v3'"
    )
    assert len(stored) == 1
    assert FlowDefinition.model_validate(orjson.loads(stored[0]["definition"])) == three


async def test_usage_folds_into_hours_and_totals(conn: asyncpg.Connection) -> None:
    def usage(user: str, status: int, credits: int, minutes: int) -> UsageRecorded:
        message = UsageRecorded.build(
            user_id=user,
            request_id=uuid.uuid4().hex,
            method="GET",
            path="/x",
            status_code=status,
            duration_ms=2.5,
            credits=credits,
        )
        return message.model_copy(update={"occurred_at": T0 + timedelta(minutes=minutes)})

    batch = _incoming(
        [
            usage("u1", 200, 1, 0),
            usage("u1", 404, 0, 10),
            usage("u1", 200, 0, 70),
            usage("u2", 429, 0, 5),
        ]
    )
    apply = usage_projection().apply
    async with conn.transaction():
        await apply(conn, batch[:2])
    async with conn.transaction():
        await apply(conn, batch[2:])
    hours = await conn.fetch(
        "SELECT user_id, hour, requests, errors, credits FROM usage_hourly ORDER BY 1, 2"
    )
    assert [tuple(h) for h in hours] == [
        ("u1", T0, 2, 1, 1),
        ("u1", T0 + timedelta(hours=1), 1, 0, 0),
        ("u2", T0, 1, 1, 0),
    ]
    total = await conn.fetchrow("SELECT * FROM usage_totals WHERE user_id = 'u1'")
    assert (total["requests"], total["errors"], total["credits"]) == (3, 1, 1)
    assert total["first_request_at"] == T0
    assert total["last_request_at"] == T0 + timedelta(minutes=70)


async def test_users_balances_fold_per_batch_and_keep_the_order_of_the_rest(
    conn: asyncpg.Connection,
) -> None:
    """A run of balance events for one user becomes one update; a key rotation between
    them still lands in order, so every batch size gives the one-by-one rows."""
    rows = []
    for size in (1, 2, 100):
        uid = f"u-{uuid.uuid4().hex[:8]}"  # and its own executions: each settles once
        h1, h2, h3 = (uuid.uuid4().hex * 2 for _ in range(3))
        built: list[Message] = [
            UserCreated.build(
                user_id=uid, email=f"{uid}@x.test", rate_limit=5, key_hash=h1, balance=10
            ),
            CreditsReserved.build(user_id=uid, execution_id=f"{uid}-e1", amount=2, balance=8),
            KeyRotated.build(user_id=uid, key_hash=h2, previous_key_hash=h1),
            CreditsReserved.build(user_id=uid, execution_id=f"{uid}-e2", amount=2, balance=6),
            CreditsSettled.build(
                user_id=uid,
                execution_id=f"{uid}-e1",
                outcome="completed",
                charged=2,
                refunded=0,
                balance=6,
                input_tokens=120,
                output_tokens=30,
                overshoot=1,
            ),
            CreditsSettled.build(
                user_id=uid,
                execution_id=f"{uid}-e2",
                outcome="failed",
                charged=0,
                refunded=2,
                balance=8,
                input_tokens=5,
                output_tokens=7,
            ),
            KeyRotated.build(user_id=uid, key_hash=h3, previous_key_hash=h2),
        ]
        items = _incoming([m.model_copy(update=_at(i)) for i, m in enumerate(built)])
        apply = users_projection(Marks()).apply
        for i in range(0, len(items), size):
            async with conn.transaction():
                await apply(conn, items[i : i + size])
        row = dict(await conn.fetchrow("SELECT * FROM users WHERE user_id = $1", uid))
        assert (row["balance"], row["key_hash"]) == (8, h3)
        assert (row["input_tokens"], row["output_tokens"]) == (125, 37)  # the settles' sum
        assert row["updated_at"] == T0 + timedelta(seconds=6)
        rows.append({k: v for k, v in row.items() if k not in ("user_id", "email", "key_hash")})
    assert rows[0] == rows[1] == rows[2]


async def test_keys_are_projected_by_id_and_a_further_key_leaves_the_users_row(
    conn: asyncpg.Connection,
) -> None:
    uid = f"u-{uuid.uuid4().hex[:8]}"
    h1, h2, h3 = (uuid.uuid4().hex * 2 for _ in range(3))
    built: list[Message] = [
        UserCreated.build(
            user_id=uid, email=f"{uid}@x.test", rate_limit=5, key_hash=h1, balance=1, last4="abcd"
        ),
        KeyCreated.build(
            user_id=uid, key_id="key_b", key_hash=h2, name="ci", scopes=("executions:read",)
        ),
        KeyRotated.build(user_id=uid, key_id="key_b", key_hash=h3, previous_key_hash=h2),
        KeyRevoked.build(user_id=uid, key_id="key_b", key_hash=h3),
    ]
    marks = Marks()
    async with conn.transaction():
        await users_projection(marks).apply(conn, _incoming(built))
    keys = {
        r["key_id"]: r for r in await conn.fetch("SELECT * FROM api_keys WHERE user_id = $1", uid)
    }
    primary = keys[primary_key_id(uid)]
    assert (
        primary["key_hash"] == h1 and primary["last4"] == "abcd" and primary["revoked_at"] is None
    )
    assert set(primary["scopes"]) == set(USER_SCOPES)
    assert keys["key_b"]["key_hash"] == h3 and keys["key_b"]["revoked_at"] is not None
    assert keys["key_b"]["scopes"] == ["executions:read"]
    assert await conn.fetchval("SELECT key_hash FROM users WHERE user_id = $1", uid) == h1
    assert marks.get("key", "key_b") is not None


async def test_credits_used_are_what_settles_charged(
    conn: asyncpg.Connection, database_url: str, pg_schema: str
) -> None:
    """``/users/me``'s credits used: the settles' charges (a refund, a priced run's unused
    reservation are not "used"), in total and over the last 24 hours."""
    now = datetime.now(UTC)
    await conn.execute(
        """INSERT INTO credits_charged (execution_id, user_id, charged, settled_at)
           VALUES ('c1', 'spender', 7, $1), ('c2', 'spender', 0, $1),
                  ('c3', 'spender', 3, $2), ('c4', 'someone else', 5, $1)""",
        now,
        now - timedelta(days=3),
    )
    pool = await create_pool(database_url, schema=pg_schema)
    try:
        row = await ReadModel(pool).usage("spender")
        nobody = await ReadModel(pool).usage("nobody")
    finally:
        await pool.close()
    assert (row["credits"], row["credits_24h"]) == (10, 7)
    assert (nobody["credits"], nobody["credits_24h"]) == (None, 0)
