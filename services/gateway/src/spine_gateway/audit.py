"""The audit trail (DESIGN §12): who did what, projected from forever topics only — auth
events, execution events and ``spine.audit`` (flow and agent changes, written with the
change) — so ``make rebuild`` reproduces it and nothing ages out with the 7-day command
topics. Every row names the acting principal (a key id, ``master``, or the service that
decided alone) as the event's envelope carries it.

Only what a principal caused is kept: users and keys created, rotated, revoked, credits
added, executions started, cancelled or answered, and every catalogue change or refusal —
not the credit movements and node events every execution makes (those are in the
execution's own trail).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from spine_contracts import (
    AuditRecorded,
    CreditsAdded,
    ExecutionCancelled,
    ExecutionStarted,
    InputReceived,
    KeyCreated,
    KeyRevoked,
    KeyRotated,
    Message,
    UserCreated,
    topics,
)
from spine_contracts.access import SYSTEM
from spine_servicekit.projector import Incoming, Projection

from .errors import InvalidInput
from .identity import Principal
from .models import AuditEntry, AuditPage

AUDIT_DDL = """
CREATE TABLE audit (
    message_id uuid PRIMARY KEY,
    at         timestamptz NOT NULL,
    actor      text,
    tenant     text NOT NULL,
    action     text NOT NULL,
    subject    text NOT NULL,
    detail     jsonb NOT NULL
);
CREATE INDEX audit_at ON audit (at DESC, message_id DESC);
CREATE INDEX audit_tenant_at ON audit (tenant, at DESC, message_id DESC);
"""

_KEY_EVENTS = (KeyCreated, KeyRevoked, KeyRotated)


def audit_row(m: Message) -> tuple[str, str, dict[str, Any]] | None:
    """(tenant, subject, detail) of an event the audit keeps; None for the rest."""
    if isinstance(m, UserCreated):
        return m.data.user_id, m.data.user_id, {"email": m.data.email, "credits": m.data.balance}
    if isinstance(m, _KEY_EVENTS):
        d = m.data
        detail: dict[str, Any] = {"key_id": d.key_id or "primary"}
        if isinstance(m, KeyCreated):
            detail.update(
                name=m.data.name,
                scopes=list(m.data.scopes),
                role=m.data.role,
                expires_at=m.data.expires_at.isoformat() if m.data.expires_at else None,
            )
        return d.user_id, d.key_id or d.user_id, detail
    if isinstance(m, CreditsAdded):
        return m.data.user_id, m.data.user_id, {"amount": m.data.amount}
    if isinstance(m, ExecutionStarted):
        d_start = m.data
        return d_start.user_id, d_start.execution_id, {"flow_id": d_start.flow_id}
    if isinstance(m, ExecutionCancelled | InputReceived):
        detail = {"reason": m.data.reason} if isinstance(m, ExecutionCancelled) else {}
        if isinstance(m, InputReceived):
            detail = {"node_id": m.data.node_id, "turn": m.data.turn}
        return m.tenant_id or SYSTEM, m.data.execution_id, detail
    if isinstance(m, AuditRecorded):
        d_audit = m.data
        return d_audit.owner, f"{d_audit.subject}:{d_audit.subject_id}", dict(d_audit.detail)
    return None


def audit_projection() -> Projection:
    async def apply(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
        rows = []
        for item in batch:
            m = item.message
            found = audit_row(m)
            if found is None:
                continue
            tenant, subject, detail = found
            action = m.data.action if isinstance(m, AuditRecorded) else m.type
            rows.append(
                (m.message_id, m.occurred_at, m.actor, tenant, action, subject, _json(detail))
            )
        if rows:
            await conn.executemany(
                """INSERT INTO audit (message_id, at, actor, tenant, action, subject, detail)
                   VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
                   ON CONFLICT (message_id) DO NOTHING""",
                rows,
            )

    return Projection(
        "gw_audit",
        (topics.AUTH_EVENTS, topics.EXECUTION_EVENTS, topics.AUDIT),
        apply,
        migrations=(AUDIT_DDL,),
    )


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class AuditService:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def page(
        self, caller: Principal, *, tenant: str | None, limit: int, cursor: str | None
    ) -> AuditPage:
        """Newest first, by keyset (``cursor`` from the previous page): the admin sees every
        tenant (or one, with ``tenant``), a user only their own account's entries."""
        where: list[str] = []
        args: list[Any] = []
        scope = caller.owner if not caller.admin else tenant
        if scope is not None:
            args.append(scope)
            where.append(f"tenant = ${len(args)}")
        if cursor is not None:
            at, message_id = _decode_cursor(cursor)
            args += [at, message_id]
            where.append(f"(at, message_id) < (${len(args) - 1}, ${len(args)})")
        args.append(limit + 1)
        sql = (
            "SELECT * FROM audit"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY at DESC, message_id DESC LIMIT ${len(args)}"
        )
        records = await self._pool.fetch(sql, *args)
        more = len(records) > limit
        entries = [AuditEntry.of(dict(r)) for r in records[:limit]]
        last = records[limit - 1] if more else None
        return AuditPage(
            entries=entries,
            next_cursor=_encode_cursor(last["at"], str(last["message_id"])) if last else None,
        )


def _encode_cursor(at: datetime, message_id: str) -> str:
    raw = f"{at.isoformat()}|{message_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, message_id = raw.split("|", 1)
        return datetime.fromisoformat(at), uuid.UUID(message_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not one this API returned", code="INVALID_CURSOR") from exc
