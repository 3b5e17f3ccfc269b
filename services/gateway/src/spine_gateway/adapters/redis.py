"""Redis: the per-user rate-limit counter, the Idempotency-Key claims and answers, and the
executions accepted by some replica before its read model showed them."""

from __future__ import annotations

import time

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from ..ratelimit import RateDecision, decide, window_start

# INCR and EXPIRE in one atomic step, so a counter never lives without its expiry.
_INCR_EXPIRE = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


# One Idempotency-Key (a hash): the operation id, the request's fingerprint, the state
# (pending while a request acts on it, open after a 5xx or a crash, done with its answer).
# Returns {verdict, value}: act (with the operation id to use), done (the stored answer),
# wait (another request is acting), reused (another body under this key). A pending claim
# lapses at `until` (Redis's clock), so a crashed gateway does not hold the key forever.
_IDEM_CLAIM = """
local h = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1])
if redis.call('EXISTS', h) == 0 then
  redis.call('HSET', h, 'op', ARGV[2], 'fp', ARGV[3], 'state', 'pending',
             'owner', ARGV[1], 'until', now + tonumber(ARGV[4]))
  redis.call('EXPIRE', h, ARGV[5])
  return {'act', ARGV[2]}
end
if redis.call('HGET', h, 'fp') ~= ARGV[3] then return {'reused', ''} end
local state = redis.call('HGET', h, 'state')
if state == 'done' then return {'done', redis.call('HGET', h, 'answer')} end
if state == 'pending' and tonumber(redis.call('HGET', h, 'until')) > now then
  return {'wait', ''}
end
redis.call('HSET', h, 'state', 'pending', 'owner', ARGV[1], 'until', now + tonumber(ARGV[4]))
return {'act', redis.call('HGET', h, 'op')}
"""

# The acting request's outcome: done with its answer, or open again (ARGV[2] = '' ) for a
# retry; waiters on the channel are told either way. Only the owner's token counts.
_IDEM_SETTLE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('HSET', KEYS[1], 'state', 'open')
else
  redis.call('HSET', KEYS[1], 'state', 'done', 'answer', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
redis.call('PUBLISH', KEYS[2], 'settled')
return 1
"""


class RedisStore:
    def __init__(self, client: Redis, prefix: str = "") -> None:
        self._r = client
        self._prefix = f"spine:gw:{prefix}"
        self._incr = client.register_script(_INCR_EXPIRE)
        self._claim = client.register_script(_IDEM_CLAIM)
        self._settle = client.register_script(_IDEM_SETTLE)

    async def hit(
        self, user_id: str, limit: int, window_s: int = 60, now: float | None = None
    ) -> RateDecision:
        """One request of ``user_id`` in its fixed window (``now`` injectable for tests)."""
        now = time.time() if now is None else now
        key = f"{self._prefix}rl:{user_id}:{window_start(now, window_s)}"
        count = int(await self._incr(keys=[key], args=[window_s + 1]))
        return decide(count, limit, now, window_s)

    async def hit_named(
        self, bucket: str, subject: str, limit: int, window_s: int, now: float | None = None
    ) -> RateDecision:
        """One event in ``bucket`` (e.g. key creation) for ``subject`` in a fixed window."""
        now = time.time() if now is None else now
        key = f"{self._prefix}rl:{bucket}:{subject}:{window_start(now, window_s)}"
        count = int(await self._incr(keys=[key], args=[window_s + 1]))
        return decide(count, limit, now, window_s)

    async def touch_keys(self, used: dict[str, float]) -> None:
        """Record when keys were last used (``key_id`` -> epoch seconds)."""
        if used:
            await self._r.hset(f"{self._prefix}key_used", mapping=used)  # type: ignore[arg-type]

    async def keys_used(self, key_ids: list[str]) -> dict[str, float]:
        if not key_ids:
            return {}
        values = await self._r.hmget(f"{self._prefix}key_used", key_ids)
        return {k: float(v) for k, v in zip(key_ids, values, strict=True) if v is not None}

    async def mark_accepted(self, execution_id: str, user_id: str, ttl_s: int) -> None:
        """Remember an execution answered before the read model showed it (any replica)."""
        await self._r.set(f"{self._prefix}acc:{execution_id}", user_id, ex=ttl_s)

    async def accepted_by(self, execution_id: str) -> str | None:
        return _text(await self._r.get(f"{self._prefix}acc:{execution_id}"))

    async def ping(self) -> bool:
        return bool(await self._r.ping())

    # -- Idempotency-Key (see idempotency.py) -------------------------------------------------

    def idem_names(self, user_id: str, scope: str, key: str) -> tuple[str, str]:
        """The key's hash and its channel (per user: two tenants never share a key)."""
        name = f"{self._prefix}idk:{user_id}:{scope}:{key}"
        return name, name + ":settled"

    async def idem_claim(
        self, name: str, token: str, op: str, fingerprint: str, pending_s: int, ttl_s: int
    ) -> tuple[str, str]:
        verdict, value = await self._claim(
            keys=[name], args=[token, op, fingerprint, pending_s, ttl_s]
        )
        return _text(verdict) or "", _text(value) or ""

    async def idem_settle(
        self, name: str, channel: str, token: str, answer: str | None, ttl_s: int
    ) -> None:
        await self._settle(keys=[name, channel], args=[token, answer or "", ttl_s])

    def subscribe(self) -> PubSub:
        return self._r.pubsub(ignore_subscribe_messages=True)


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
