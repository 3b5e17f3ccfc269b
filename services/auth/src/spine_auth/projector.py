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
settled     +refunded              ``charged`` is what the execution cost, with
                                   its ``input_tokens``/``output_tokens`` and
                                   the ``overshoot`` asked beyond the reservation
==========  =====================  ==========================================

``users.input_tokens``/``output_tokens`` are the running totals of the settles' tokens:
unlike the balance no event carries them, so a settle adds its own when its movement row
is new — a message applied again adds nothing.
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
    # credits per token (docs/credits.md): a settle's tokens and overshoot, a user's totals
    """
    ALTER TABLE credit_movements
        ADD COLUMN IF NOT EXISTS input_tokens  bigint NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS output_tokens bigint NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS overshoot     bigint NOT NULL DEFAULT 0;
    ALTER TABLE users
        ADD COLUMN IF NOT EXISTS input_tokens  bigint NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS output_tokens bigint NOT NULL DEFAULT 0;
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
#: one round trip per batch; the new rows' tokens go to their users' totals
_INSERT_MOVEMENTS = """
    WITH new AS (
        INSERT INTO credit_movements (message_id, user_id, execution_id, kind, amount,
                                      balance, charged, input_tokens, output_tokens,
                                      overshoot, occurred_at)
        SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                             $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[],
                             $10::bigint[], $11::timestamptz[])
        ON CONFLICT (message_id) DO NOTHING
        RETURNING user_id, input_tokens, output_tokens
    )
    UPDATE users AS u SET input_tokens = u.input_tokens + n.input_tokens,
                          output_tokens = u.output_tokens + n.output_tokens
    FROM (SELECT user_id, sum(input_tokens) AS input_tokens,
                 sum(output_tokens) AS output_tokens
          FROM new GROUP BY user_id HAVING sum(input_tokens) + sum(output_tokens) > 0) AS n
    WHERE u.user_id = n.user_id"""


@dataclass
class _UserChange:
    key_hash: str | None = None
    balance: int | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class _Movement:
    """One credit event as a ``credit_movements`` row (``amount`` signed)."""

    user_id: str
    execution_id: str | None
    kind: str
    amount: int
    balance: int
    charged: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    overshoot: int = 0


async def apply(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
    """Apply a batch: new users, then each user's last key hash and balance, then the
    movements (and their tokens).

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
                (m.message_id, d.user_id, None, "created", d.balance, d.balance, 0, 0, 0, 0, at)
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
        movements.append(
            (
                m.message_id,
                row.user_id,
                row.execution_id,
                row.kind,
                row.amount,
                row.balance,
                row.charged,
                row.input_tokens,
                row.output_tokens,
                row.overshoot,
                at,
            )
        )
        change = changes.setdefault(row.user_id, _UserChange())
        change.balance, change.updated_at = row.balance, at
    if created:
        await conn.executemany(_INSERT_USER, created)
    if changes:
        await conn.executemany(
            _UPDATE_USER,
            [(uid, c.key_hash, c.balance, c.updated_at) for uid, c in changes.items()],
        )
    if movements:
        await conn.execute(
            _INSERT_MOVEMENTS, *(list(column) for column in zip(*movements, strict=True))
        )


def _movement(m: object) -> _Movement | None:
    """The ``credit_movements`` row of a credit event (``None``: not one)."""
    if isinstance(m, CreditsAdded):
        return _Movement(m.data.user_id, None, "added", m.data.amount, m.data.balance)
    if isinstance(m, CreditsReserved):
        held = m.data
        return _Movement(held.user_id, held.execution_id, "reserved", -held.amount, held.balance)
    if isinstance(m, CreditsRejected):
        refused = m.data
        return _Movement(refused.user_id, refused.execution_id, "rejected", 0, refused.balance)
    if isinstance(m, ReservationWithdrawn):
        back = m.data
        return _Movement(back.user_id, back.execution_id, "withdrawn", back.refunded, back.balance)
    if isinstance(m, CreditsSettled):
        done = m.data
        return _Movement(
            done.user_id,
            done.execution_id,
            "settled",
            done.refunded,
            done.balance,
            charged=done.charged,
            input_tokens=done.input_tokens,
            output_tokens=done.output_tokens,
            overshoot=done.overshoot,
        )
    return None


def auth_projection() -> Projection:
    return Projection(name=NAME, topics=(topics.AUTH_EVENTS,), apply=apply, migrations=MIGRATIONS)


def projections() -> tuple[Projection, ...]:
    """Every projection kept in auth's schema (what ``make rebuild`` replays)."""
    return (auth_projection(),)


#: what ``make rebuild`` finds under the ``ai_spine.projections`` entry points (pyproject.toml)
REBUILD = ServiceProjections(projections, AuthSettings)
