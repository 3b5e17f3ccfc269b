"""Auth's read model: ``spine.auth.events`` into ``users`` and ``credit_movements``.

Runs on :class:`spine_servicekit.projector.Projector`, which stores the applied offsets in
the same transaction as these rows; the schema is a parameter (``SPINE_AUTH_SCHEMA``,
``auth`` by default) and the tables are named unqualified.

``users.balance`` is copied from each event (auth decided it; the projection does not
recompute). ``credit_movements`` has one row per event that concerns credits, with
``amount`` the signed change of the balance it caused, so for every user
``sum(amount) = users.balance``:

==========  =====================  ==========================================
kind        amount                 notes
==========  =====================  ==========================================
created     +credits               the initial credits of ``UserCreated``
added       +amount
reserved    -amount                held for ``execution_id``
rejected    0                      a refused reservation (balance unchanged)
withdrawn   +refunded              the gateway timed out: everything back
settled     +refunded              ``charged`` is what the execution cost
==========  =====================  ==========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from spine_contracts import (
    CreditsAdded,
    CreditsRejected,
    CreditsReserved,
    CreditsSettled,
    KeyRotated,
    ReservationWithdrawn,
    UserCreated,
    topics,
)
from spine_contracts.access import primary_key_id
from spine_servicekit.projector import Incoming, Projection
from spine_servicekit.rebuild import ServiceProjections

from .settings import AuthSettings

NAME = "auth"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        user_id      text        PRIMARY KEY,
        email        text        NOT NULL,
        name         text        NOT NULL DEFAULT '',
        organization text        NOT NULL DEFAULT '',
        rate_limit   integer     NOT NULL,
        key_hash     text        NOT NULL,
        balance      bigint      NOT NULL,
        created_at   timestamptz NOT NULL,
        updated_at   timestamptz NOT NULL
    );
    CREATE INDEX users_key_hash_idx ON users (key_hash);
    CREATE INDEX users_email_idx ON users (lower(email));
    CREATE TABLE credit_movements (
        message_id   uuid        PRIMARY KEY,
        user_id      text        NOT NULL,
        execution_id text,
        kind         text        NOT NULL,
        amount       bigint      NOT NULL,
        balance      bigint      NOT NULL,
        charged      bigint      NOT NULL DEFAULT 0,
        occurred_at  timestamptz NOT NULL
    );
    CREATE INDEX credit_movements_user_idx ON credit_movements (user_id, occurred_at);
    CREATE INDEX credit_movements_execution_idx ON credit_movements (execution_id)
        WHERE execution_id IS NOT NULL;
    """,
)

_INSERT_USER = """
    INSERT INTO users (user_id, email, name, organization, rate_limit, key_hash, balance,
                       created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
    ON CONFLICT (user_id) DO NOTHING"""
_UPDATE_USER = """
    UPDATE users SET key_hash = COALESCE($2, key_hash), balance = COALESCE($3, balance),
                     updated_at = GREATEST(updated_at, $4)
    WHERE user_id = $1"""
_INSERT_MOVEMENT = """
    INSERT INTO credit_movements (message_id, user_id, execution_id, kind, amount, balance,
                                  charged, occurred_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (message_id) DO NOTHING"""


@dataclass
class _UserChange:
    key_hash: str | None = None
    balance: int | None = None
    updated_at: datetime | None = None


async def apply(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
    """Apply a batch: new users, then each user's last key hash and balance, then movements.

    A user's events are in one partition, in order, so the last balance of the batch is
    the balance after all of them.
    """
    created: list[tuple[object, ...]] = []
    changes: dict[str, _UserChange] = {}
    movements: list[tuple[object, ...]] = []
    for item in batch:
        m = item.message
        at = m.occurred_at
        if isinstance(m, UserCreated):
            d = m.data
            user = (d.user_id, d.email, d.name, d.organization, d.rate_limit, d.key_hash)
            created.append((*user, d.balance, at))
            movements.append(
                (m.message_id, d.user_id, None, "created", d.balance, d.balance, 0, at)
            )
            continue
        if isinstance(m, KeyRotated):
            if m.data.key_id not in (None, primary_key_id(m.data.user_id)):
                continue  # a further key: this table holds the primary key's hash only
            change = changes.setdefault(m.data.user_id, _UserChange())
            change.key_hash, change.updated_at = m.data.key_hash, at
            continue
        row = _movement(m)
        if row is None:
            continue  # AuthCommandRejected: nothing to project
        user_id, execution_id, kind, amount, balance, charged = row
        movements.append((m.message_id, user_id, execution_id, kind, amount, balance, charged, at))
        change = changes.setdefault(user_id, _UserChange())
        change.balance, change.updated_at = balance, at
    if created:
        await conn.executemany(_INSERT_USER, created)
    if changes:
        await conn.executemany(
            _UPDATE_USER,
            [(uid, c.key_hash, c.balance, c.updated_at) for uid, c in changes.items()],
        )
    if movements:
        await conn.executemany(_INSERT_MOVEMENT, movements)


def _movement(m: object) -> tuple[str, str | None, str, int, int, int] | None:
    """(user_id, execution_id, kind, signed amount, balance after, charged) of a credit event."""
    if isinstance(m, CreditsAdded):
        return m.data.user_id, None, "added", m.data.amount, m.data.balance, 0
    if isinstance(m, CreditsReserved):
        held = m.data
        return held.user_id, held.execution_id, "reserved", -held.amount, held.balance, 0
    if isinstance(m, CreditsRejected):
        refused = m.data
        return refused.user_id, refused.execution_id, "rejected", 0, refused.balance, 0
    if isinstance(m, ReservationWithdrawn):
        back = m.data
        return back.user_id, back.execution_id, "withdrawn", back.refunded, back.balance, 0
    if isinstance(m, CreditsSettled):
        done = m.data
        return (
            done.user_id,
            done.execution_id,
            "settled",
            done.refunded,
            done.balance,
            done.charged,
        )
    return None


def auth_projection() -> Projection:
    return Projection(name=NAME, topics=(topics.AUTH_EVENTS,), apply=apply, migrations=MIGRATIONS)


def projections() -> tuple[Projection, ...]:
    """Every projection kept in auth's schema (what ``make rebuild`` replays)."""
    return (auth_projection(),)


#: what ``make rebuild`` finds under the ``ai_spine.projections`` entry points (pyproject.toml)
REBUILD = ServiceProjections(projections, AuthSettings)
