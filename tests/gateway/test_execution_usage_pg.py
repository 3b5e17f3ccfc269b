"""``GET /executions/{id}`` shows what an ended run's models used and what it was charged:
the ``usage`` of its terminal event, read back from the trail the projection keeps (real
PostgreSQL schema)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
import pytest_asyncio
from spine_contracts import (
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    FlowDefinition,
    Message,
)
from spine_contracts.messages.executions import ExecutionUsage
from spine_gateway.adapters.postgres import ReadModel
from spine_gateway.projection import Marks, executions_projection
from spine_servicekit.postgres import create_pool, migrate
from spine_servicekit.projector import Incoming

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FLOW = FlowDefinition.model_validate({"flow_id": "f", "nodes": [{"id": "a", "agent_id": "llm"}]})
USAGE = ExecutionUsage(
    input_tokens=1200,
    output_tokens=300,
    token_credits=1.8,
    charge=22,
    charged=20,
    overshoot=2,
    untrusted=("theirs",),
)


def _started(eid: str) -> ExecutionStarted:
    return ExecutionStarted.build(
        execution_id=eid,
        seq=1,
        user_id="u1",
        flow_id="f",
        flow_version="v1",
        flow=FLOW,
        credits_reserved=20,
        base_credits=2,
    )


def _trail() -> list[Message]:
    return [
        _started("metered"),
        ExecutionCompleted.build(execution_id="metered", seq=2, usage=USAGE),
        _started("plain"),
        ExecutionFailed.build(execution_id="plain", seq=2, error_message="x"),
        _started("running"),
    ]


def _incoming(messages: Sequence[Message]) -> list[Incoming]:
    return [Incoming("events", 0, i, None, 0, m) for i, m in enumerate(messages)]


@pytest_asyncio.fixture(loop_scope="session")
async def read(database_url: str, pg_schema: str) -> AsyncIterator[ReadModel]:
    projection = executions_projection(Marks())
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, pg_schema, "gw_executions", projection.migrations)
        await conn.execute(f'SET search_path TO "{pg_schema}"')
        async with conn.transaction():
            await projection.apply(conn, _incoming(_trail()))
    finally:
        await conn.close()
    pool = await create_pool(database_url, schema=pg_schema)
    try:
        yield ReadModel(pool)
    finally:
        await pool.close()


async def test_an_ended_metered_run_shows_its_usage(read: ReadModel) -> None:
    assert await read.execution_usage("metered") == USAGE.model_dump(mode="json")


async def test_an_unmetered_running_or_unknown_run_shows_none(read: ReadModel) -> None:
    assert await read.execution_usage("plain") is None
    assert await read.execution_usage("running") is None
    assert await read.execution_usage("nobody") is None
