"""Redis: the per-user rate-limit counter and the Idempotency-Key answers (execute: the
execution id; cancel and input: a reservation while running, then the first answer)."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from ..ratelimit import RateDecision, decide, window_start

# INCR and EXPIRE in one atomic step, so a counter never lives without its expiry.
_INCR_EXPIRE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


# Delete the key only while it still holds this request's reservation.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore:
    def __init__(self, client: Redis, prefix: str = "") -> None:
        self._r = client
        self._prefix = f"spine:gw:{prefix}"
        self._incr = client.register_script(_INCR_EXPIRE)
        self._release = client.register_script(_RELEASE)

    async def hit(self, user_id: str, limit: int, window_s: int = 60) -> RateDecision:
        now = time.time()
        key = f"{self._prefix}rl:{user_id}:{window_start(now, window_s)}"
        count = int(await self._incr(keys=[key], args=[window_s + 1]))
        return decide(count, limit, now, window_s)

    async def claim_idempotency(self, user_id: str, key: str, value: str, ttl_s: int) -> str:
        """Store ``value`` for (user, key) unless one is there; return the stored one."""
        name = f"{self._prefix}idem:{user_id}:{key}"
        if await self._r.set(name, value, nx=True, ex=ttl_s):
            return value
        stored = await self._r.get(name)
        return stored.decode() if isinstance(stored, bytes) else str(stored or value)

    async def mark_accepted(self, execution_id: str, user_id: str, ttl_s: int) -> None:
        """Remember an execution answered before the read model showed it (any replica)."""
        await self._r.set(f"{self._prefix}acc:{execution_id}", user_id, ex=ttl_s)

    async def accepted_by(self, execution_id: str) -> str | None:
        stored = await self._r.get(f"{self._prefix}acc:{execution_id}")
        if stored is None:
            return None
        return stored.decode() if isinstance(stored, bytes) else str(stored)

    async def ping(self) -> bool:
        return bool(await self._r.ping())

    def _idem(self, user_id: str, key: str) -> str:
        return f"{self._prefix}idem:{user_id}:{key}"

    async def reserve_idempotent(self, user_id: str, key: str, token: str, ttl_s: int) -> bool:
        """SET NX: ``True`` for the one request that gets to act on this key."""
        return bool(await self._r.set(self._idem(user_id, key), token, nx=True, ex=ttl_s))

    async def get_idempotent(self, user_id: str, key: str) -> str | None:
        stored = await self._r.get(self._idem(user_id, key))
        if stored is None:
            return None
        return stored.decode() if isinstance(stored, bytes) else str(stored)

    async def release_idempotent(self, user_id: str, key: str, token: str) -> None:
        await self._release(keys=[self._idem(user_id, key)], args=[token])

    async def put_idempotent(self, user_id: str, key: str, value: str, ttl_s: int) -> None:
        await self._r.set(self._idem(user_id, key), value, ex=ttl_s)
