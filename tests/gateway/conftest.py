"""The gateway's Redis port as two replicas see it: two clients on one fresh key prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
from redis.asyncio import Redis
from spine_gateway.adapters.redis import RedisStore


@pytest_asyncio.fixture(loop_scope="session")
async def replicas(redis_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two gateway replicas' stores (own clients) on one fresh prefix; cleaned afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    yield RedisStore(clients[0], prefix), RedisStore(clients[1], prefix)
    async for name in clients[0].scan_iter(f"spine:gw:{prefix}*"):
        await clients[0].delete(name)
    for c in clients:
        await c.aclose()
