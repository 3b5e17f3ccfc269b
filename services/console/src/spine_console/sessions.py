"""Sessions in Redis: the browser holds only an opaque id in an HttpOnly cookie.

A session keeps the short-lived key minted at sign-in (never sent to the browser), who it
belongs to, and the CSRF token its forms carry. Before sign-in an anonymous session holds
only a CSRF token for the sign-in form; signing in replaces it with a new id (rotation)."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

COOKIE = "spine_console"


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Session:
    sid: str
    csrf: str
    key: str = ""
    key_id: str = ""
    role: str = ""
    user_id: str = ""
    name: str = ""
    scopes: tuple[str, ...] = ()

    @property
    def signed_in(self) -> bool:
        return bool(self.key)

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def can(self, scope: str) -> bool:
        return self.admin or scope in self.scopes


class Sessions:
    def __init__(self, redis: Redis, prefix: str, ttl_s: int, login_ttl_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self.ttl_s = ttl_s
        self._login_ttl_s = login_ttl_s

    def _name(self, sid: str) -> str:
        return f"{self._prefix}session:{sid}"

    async def get(self, sid: str | None) -> Session | None:
        if not sid or len(sid) > 100:
            return None
        raw = await self._redis.get(self._name(sid))
        if raw is None:
            return None
        data: dict[str, Any] = orjson.loads(raw)
        data["scopes"] = tuple(data.get("scopes", ()))
        return Session(sid=sid, **data)

    async def anonymous(self) -> Session:
        session = Session(sid=new_token(), csrf=new_token())
        await self._save(session, self._login_ttl_s)
        return session

    async def sign_in(self, old: Session | None, **who: Any) -> Session:
        """A new id and CSRF token for the signed-in session; the old id stops working."""
        if old is not None:
            await self.drop(old)
        session = Session(sid=new_token(), csrf=new_token(), **who)
        await self._save(session, self.ttl_s)
        return session

    async def drop(self, session: Session) -> None:
        await self._redis.delete(self._name(session.sid))

    async def _save(self, session: Session, ttl_s: int) -> None:
        data = asdict(session)
        del data["sid"]
        data["scopes"] = list(session.scopes)
        await self._redis.set(self._name(session.sid), orjson.dumps(data), ex=ttl_s)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:  # noqa: BLE001 — readiness: any Redis failure means not ready
            return False
