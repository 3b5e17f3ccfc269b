"""The orchestrator's read model: executions, node runs and agent messages (own schema).

Fed by the projector base from ``spine.executions.events`` (kept forever), so it can be
dropped and rebuilt from offset 0 at any time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from spine_contracts import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionQueued,
    ExecutionStarted,
    InputReceived,
    NodeCompleted,
    NodeDispatched,
    NodeFailed,
    NodeSkipped,
    NodeWaitingInput,
    topics,
)
from spine_servicekit.projector import Incoming, Projection
from spine_servicekit.rebuild import ServiceProjections

from .settings import OrchestratorSettings

MIGRATIONS = (
    """
    CREATE TABLE executions (
        execution_id  text PRIMARY KEY,
        user_id       text NOT NULL,
        flow_id       text NOT NULL,
        flow_version  text NOT NULL,
        status        text NOT NULL,
        input_data    jsonb NOT NULL,
        output_data   jsonb,
        error_message text,
        last_seq      int NOT NULL,
        created_at    timestamptz NOT NULL,
        updated_at    timestamptz NOT NULL,
        completed_at  timestamptz
    );
    CREATE INDEX executions_user ON executions (user_id, created_at DESC);
    CREATE TABLE node_runs (
        execution_id  text NOT NULL,
        node_id       text NOT NULL,
        attempt       int NOT NULL,
        agent_id      text,
        status        text NOT NULL,
        output        jsonb,
        error_message text,
        started_at    timestamptz NOT NULL,
        finished_at   timestamptz,
        PRIMARY KEY (execution_id, node_id, attempt)
    );
    CREATE TABLE agent_messages (
        task_id      text PRIMARY KEY,
        execution_id text NOT NULL,
        node_id      text NOT NULL,
        attempt      int NOT NULL,
        to_agent     text NOT NULL,
        payload      jsonb NOT NULL,
        created_at   timestamptz NOT NULL
    );
    CREATE INDEX agent_messages_execution ON agent_messages (execution_id, created_at);
    """,
)

TERMINAL = {
    ExecutionCompleted: "completed",
    ExecutionFailed: "failed",
    ExecutionCancelled: "cancelled",
}


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


# queued, then started: the start of a queued execution moves it to running (once)
_STARTED = (
    "INSERT INTO executions VALUES ($1,$2,$3,$4,$8,$5,NULL,NULL,$6,$7,$7,NULL)"
    " ON CONFLICT (execution_id) DO UPDATE SET status=EXCLUDED.status,"
    " last_seq=GREATEST(executions.last_seq, EXCLUDED.last_seq),"
    " updated_at=GREATEST(executions.updated_at, EXCLUDED.updated_at)"
    " WHERE executions.status='queued' AND EXCLUDED.status='running'"
    " AND executions.last_seq < EXCLUDED.last_seq"
)
_DISPATCHED = (
    "INSERT INTO node_runs VALUES ($1,$2,$3,$4,'running',NULL,NULL,$5,NULL) ON CONFLICT DO NOTHING"
)
_MESSAGE = "INSERT INTO agent_messages VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT DO NOTHING"
_SKIPPED = (
    "INSERT INTO node_runs VALUES ($1,$2,0,NULL,'skipped',NULL,$3,$4,$4) ON CONFLICT DO NOTHING"
)
_WAITING = (
    "UPDATE node_runs SET status='waiting_input' WHERE execution_id=$1 AND node_id=$2"
    " AND attempt=$3 AND status='running'"
)
_FINISHED = (
    "INSERT INTO node_runs VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$8)"
    " ON CONFLICT (execution_id, node_id, attempt) DO UPDATE SET status=$5,"
    " output=$6, error_message=$7, finished_at=$8"
)
_STATUS = (
    "UPDATE executions SET status=$2, output_data=COALESCE($3::jsonb, output_data),"
    " error_message=COALESCE($4, error_message), updated_at=GREATEST(updated_at, $5),"
    " last_seq=GREATEST(last_seq, $6),"
    " completed_at=CASE WHEN $2 IN ('completed','failed','cancelled') THEN $5"
    " ELSE completed_at END WHERE execution_id=$1 AND last_seq < $6"
)
_TOUCHED = (
    "UPDATE executions SET updated_at=GREATEST(updated_at, $2), last_seq=GREATEST(last_seq, $3)"
    " WHERE execution_id=$1"
)


async def apply(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
    """One ``executemany`` per statement kind for the whole batch, in an order that gives
    the same rows as applying the events one by one: round trips, not rows, bound a
    projection.
    Status changes keep event order; ``updated_at`` and ``last_seq`` only move forward.

    Applying an event again changes nothing (inserts do nothing on conflict, a status moves
    only past ``last_seq``, a node waits for input only while running), so the projection
    needs no table of applied message ids (``dedupe=False``; G6)."""
    started: list[tuple[object, ...]] = []
    dispatched: list[tuple[object, ...]] = []
    messages: list[tuple[object, ...]] = []
    skipped: list[tuple[object, ...]] = []
    waiting: list[tuple[object, ...]] = []
    finished: list[tuple[object, ...]] = []
    statuses: list[tuple[object, ...]] = []
    touched: dict[str, tuple[datetime, int]] = {}
    for item in batch:
        m = item.message
        d: Any = m.data  # the body of whichever event ``m`` is, as the branches narrow it
        at = m.occurred_at
        if isinstance(m, (ExecutionQueued, ExecutionStarted)):
            started.append(
                (
                    d.execution_id,
                    d.user_id,
                    d.flow_id,
                    d.flow_version,
                    _json(d.input_data),
                    d.seq,
                    at,
                    "queued" if isinstance(m, ExecutionQueued) else "running",
                )
            )
            continue
        if isinstance(m, NodeDispatched):
            dispatched.append((d.execution_id, d.node_id, d.attempt, d.agent_id, at))
            messages.append(
                (d.task_id, d.execution_id, d.node_id, d.attempt, d.agent_id, _json(d.payload), at)
            )
        elif isinstance(m, (NodeCompleted, NodeFailed)):
            ok = isinstance(m, NodeCompleted)
            finished.append(
                (
                    d.execution_id,
                    d.node_id,
                    d.attempt,
                    d.agent_id,
                    "completed" if ok else "failed",
                    _json(d.output) if ok else None,
                    None if ok else d.error_message,
                    at,
                )
            )
        elif isinstance(m, NodeSkipped):
            skipped.append((d.execution_id, d.node_id, d.reason, at))
        elif isinstance(m, NodeWaitingInput):
            waiting.append((d.execution_id, d.node_id, d.attempt))
        # a NodeWaitingAgent is in the trail (the gateway's); here it only touches the row
        status = None
        output = None
        error = None
        if isinstance(m, NodeWaitingInput):
            status = "waiting_input"
        elif isinstance(m, InputReceived):
            status = "running"
        elif type(m) in TERMINAL:
            status = TERMINAL[type(m)]
            output = _json(d.output_data) if isinstance(m, ExecutionCompleted) else None
            error = d.error_message if isinstance(m, ExecutionFailed) else None
            if isinstance(m, ExecutionCancelled):
                error = d.reason
        if status is not None:
            statuses.append((d.execution_id, status, output, error, at, d.seq))
        elif hasattr(d, "seq"):
            last = touched.get(d.execution_id)
            if last is None:
                touched[d.execution_id] = (at, d.seq)
            else:
                touched[d.execution_id] = (max(at, last[0]), max(d.seq, last[1]))
    for statement, rows in (
        (_STARTED, started),
        (_DISPATCHED, dispatched),
        (_MESSAGE, messages),
        (_SKIPPED, skipped),
        (_WAITING, waiting),
        (_FINISHED, finished),
        (_STATUS, statuses),
    ):
        if rows:
            await conn.executemany(statement, rows)
    if touched:
        await conn.executemany(_TOUCHED, [(eid, at, seq) for eid, (at, seq) in touched.items()])


PROJECTION = Projection(
    name="executions",
    topics=(topics.EXECUTION_EVENTS,),
    apply=apply,
    migrations=MIGRATIONS,
    # idempotent by seq (see apply), so the applied-ids table would be work for nothing
    dedupe=False,
)


def projections() -> tuple[Projection, ...]:
    """Every projection kept in the orchestrator's schema (what ``make rebuild`` replays)."""
    return (PROJECTION,)


#: what ``make rebuild`` finds under the ``ai_spine.projections`` entry points (pyproject.toml)
REBUILD = ServiceProjections(projections, OrchestratorSettings)
