"""The registry's read model: one row per agent, from the compacted catalogue topic."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import orjson
from spine_contracts import AgentDeregistered, AgentRegistered, AgentStatusChanged, topics
from spine_servicekit.projector import Incoming, Projection
from spine_servicekit.rebuild import ServiceProjections

from .settings import RegistrySettings

MIGRATIONS = (
    """
    CREATE TABLE agents (
        agent_id    text PRIMARY KEY,
        info        jsonb NOT NULL,
        registered  boolean NOT NULL,
        active      boolean NOT NULL,
        last_seen   timestamptz,
        reason      text,
        updated_at  timestamptz NOT NULL
    );
    """,
    # the agent's owner (DESIGN §12): ``system`` or a user id, kept by a deregistration
    "ALTER TABLE agents ADD COLUMN owner text NOT NULL DEFAULT 'system';",
)


async def apply(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
    rows = []
    for item in batch:
        m = item.message
        if isinstance(m, (AgentRegistered, AgentStatusChanged, AgentDeregistered)):
            d = m.data
            rows.append(
                (
                    d.agent.agent_id,
                    orjson.dumps(d.agent.model_dump(mode="json")).decode(),
                    d.registered,
                    d.active,
                    d.last_seen,
                    d.reason,
                    m.occurred_at,
                    d.owner,
                )
            )
    if rows:
        await conn.executemany(
            "INSERT INTO agents (agent_id, info, registered, active, last_seen, reason,"
            " updated_at, owner) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (agent_id) DO UPDATE"
            " SET info=$2, registered=$3, active=$4, last_seen=$5, reason=$6, updated_at=$7,"
            " owner=$8",
            rows,
        )


PROJECTION = Projection(
    name="agents", topics=(topics.REGISTRY_EVENTS,), apply=apply, migrations=MIGRATIONS
)


def projections() -> tuple[Projection, ...]:
    """Every projection kept in the registry's schema (what ``make rebuild`` replays)."""
    return (PROJECTION,)


#: what ``make rebuild`` finds under the ``ai_spine.projections`` entry points (pyproject.toml)
REBUILD = ServiceProjections(projections, RegistrySettings)
