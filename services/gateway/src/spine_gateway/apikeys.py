"""Keys beyond the first (DESIGN §12): a user's scoped and expiring keys, the admin keys the
master key mints (so a console never holds the master key), listing and revocation.

The secret is drawn here, shown once, and only its SHA-256 and last four characters go to
auth — the single writer per account, which enforces the cap on keys at once. What a key
may mint or revoke is :mod:`.policy`'s decision; creation is rate-limited per account.
An answer comes once this replica's read model shows the change, so the new key works on
the next request and a revoked one is refused (other replicas follow within their
projector's latency).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from spine_contracts import CreateKey, RevokeKey, topics
from spine_contracts.access import MAX_ADMIN_KEY_TTL_S, MAX_KEYS_PER_USER, SYSTEM, Role
from spine_servicekit.projector import Projector

from .adapters.postgres import ReadModel
from .adapters.redis import RedisStore
from .commands import Commands, new_request_id
from .errors import Conflict, InvalidInput, NotFound, RateLimited
from .identity import Principal, expired
from .keys import generate_key, hash_key
from .models import CreateKeyRequest, KeyList, KeyRevokedView, KeyView, NewScopedKey
from .policy import may_mint, may_revoke
from .visibility import ReadYourWrites

#: keys an account may create per minute
CREATES_PER_MINUTE = 10
#: an admin key's lifetime when the request names none
DEFAULT_ADMIN_TTL_S = 3600


def new_key_id() -> str:
    """Random, never derived from the secret: ids are shown and logged, secrets never."""
    return "key_" + secrets.token_hex(8)


class KeysService:
    def __init__(
        self,
        *,
        commands: Commands,
        read: ReadModel,
        store: RedisStore,
        rw: ReadYourWrites,
        users: Projector,
    ) -> None:
        self.commands = commands
        self.read = read
        self.store = store
        self.rw = rw
        self.projector = users

    async def list(self, caller: Principal) -> KeyList:
        """The caller's account's live keys (the admin: the admin keys)."""
        rows = await self.read.keys_of(caller.owner or SYSTEM)
        used = await self.store.keys_used([r["key_id"] for r in rows])
        return KeyList(
            keys=[
                KeyView.of(r, last_used=used.get(r["key_id"]), current=r["key_id"] == caller.key_id)
                for r in rows
            ]
        )

    async def create(self, caller: Principal, body: CreateKeyRequest) -> NewScopedKey:
        now = datetime.now(UTC)
        role: Role = body.role or ("admin" if caller.admin else "user")
        account = SYSTEM if role == "admin" else (caller.owner or SYSTEM)
        scopes = tuple(body.scopes) if body.scopes is not None else _default_scopes(caller, role)
        expires_at = _expiry(caller, body, role, now)
        may_mint(caller.caller, scopes, expires_at, role)
        limited = await self.store.hit_named("keys", account, CREATES_PER_MINUTE, 60)
        if not limited.allowed:
            raise RateLimited(
                f"at most {CREATES_PER_MINUTE} keys may be created per minute",
                headers=limited.headers(),
            )
        if role == "user":
            live = [k for k in await self.read.keys_of(account) if not expired(k, now)]
            if len(live) >= MAX_KEYS_PER_USER:
                raise Conflict(
                    f"{len(live)} keys at once is the limit: revoke one first",
                    code="KEY_LIMIT_REACHED",
                )
        secret = generate_key()
        key_id = new_key_id()
        request_id = new_request_id()
        cmd = CreateKey.build(
            actor=caller.actor,
            tenant_id=account,
            user_id=account,
            key_id=key_id,
            key_hash=hash_key(secret),
            name=body.name,
            scopes=scopes,
            role=role,
            expires_at=expires_at,
            last4=secret[-4:],
            request_id=request_id,
        )
        await self.commands.ask(topics.AUTH_COMMANDS, account, cmd, request_id)
        await self.rw.event(self.projector, "key", key_id)
        return NewScopedKey(
            key_id=key_id,
            api_key=secret,
            name=body.name,
            scopes=list(scopes),
            role=role,
            last4=secret[-4:],
            expires_at=expires_at.isoformat() if expires_at is not None else None,
        )

    async def revoke(self, caller: Principal, key_id: str) -> KeyRevokedView:
        row = await self.read.key(key_id)
        mine = row is not None and (caller.admin or row["user_id"] == caller.owner)
        if row is None or row["revoked_at"] is not None or not mine:
            raise NotFound(f"key {key_id!r} not found", code="KEY_NOT_FOUND")
        may_revoke(caller.caller, row["scopes"], own=key_id == caller.key_id)
        request_id = new_request_id()
        cmd = RevokeKey.build(
            actor=caller.actor,
            tenant_id=row["user_id"],
            user_id=row["user_id"],
            key_id=key_id,
            request_id=request_id,
        )
        await self.commands.ask(topics.AUTH_COMMANDS, row["user_id"], cmd, request_id)
        await self.rw.event(self.projector, "key_revoked", key_id)
        return KeyRevokedView(key_id=key_id, revoked=True)


def _default_scopes(caller: Principal, role: Role) -> tuple[str, ...]:
    return () if role == "admin" else tuple(sorted(caller.scopes))


def _expiry(
    caller: Principal, body: CreateKeyRequest, role: Role, now: datetime
) -> datetime | None:
    """The requested expiry; an admin key's is bounded by 12 h, and a key minted by an
    expiring key inherits that expiry when it names none."""
    if body.expires_in_s is not None and body.expires_at is not None:
        raise InvalidInput("give expires_in_s or expires_at, not both")
    expires_at = body.expires_at
    if body.expires_in_s is not None:
        expires_at = now + timedelta(seconds=body.expires_in_s)
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at must be in the future", code="INVALID_EXPIRY")
    if role == "admin":
        if expires_at is None:
            expires_at = now + timedelta(seconds=DEFAULT_ADMIN_TTL_S)
        if expires_at > now + timedelta(seconds=MAX_ADMIN_KEY_TTL_S, minutes=1):
            raise InvalidInput(
                f"an admin key lives at most {MAX_ADMIN_KEY_TTL_S // 3600} hours",
                code="INVALID_EXPIRY",
            )
    if expires_at is None:
        expires_at = caller.expires_at
    return expires_at
