"""Redis: the per-user rate-limit counter and the Idempotency-Key → execution_id map."""

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


class RedisStore:
    def __init__(self, client: Redis, prefix: str = "") -> None:
        self._r = client
        self._prefix = f"spine:gw:{prefix}"
        self._incr = client.register_script(_INCR_EXPIRE)

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

    async def ping(self) -> bool:
        return bool(await self._r.ping())

    async def put_idempotent(self, user_id: str, key: str, value: str, ttl_s: int) -> None:
        await self._r.set(f"{self._prefix}idem:{user_id}:{key}", value, ex=ttl_s)
