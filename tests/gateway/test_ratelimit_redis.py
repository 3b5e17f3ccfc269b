"""The rate limiter against the real Redis: a concurrent burst over two gateway replicas
lets exactly the limit through, and the window rolls over (the clock is injected)."""

from __future__ import annotations

import asyncio

import pytest
from spine_gateway.adapters.redis import RedisStore

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WINDOW = 60
T0 = 1_800_000_000.0  # the start of a window (a multiple of 60)


async def test_a_burst_over_two_replicas_lets_exactly_the_limit_through(
    replicas: tuple[RedisStore, RedisStore],
) -> None:
    hits = [replicas[i % 2].hit("u1", 25, WINDOW, now=T0 + 1) for i in range(100)]
    decisions = await asyncio.gather(*hits)
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 25
    assert sorted(d.remaining for d in allowed) == list(range(25))
    refused = [d for d in decisions if not d.allowed]
    assert {d.retry_after for d in refused} == {59} and {d.reset_at for d in decisions} == {
        int(T0) + WINDOW
    }


async def test_the_window_rolls_over(replicas: tuple[RedisStore, RedisStore]) -> None:
    a, b = replicas
    assert [(await a.hit("u2", 2, WINDOW, now=T0 + s)).allowed for s in (0, 30, 59.9)] == [
        True,
        True,
        False,
    ]
    nxt = await b.hit("u2", 2, WINDOW, now=T0 + WINDOW)  # the next window, on the other replica
    assert nxt.allowed and nxt.remaining == 1 and nxt.reset_at == int(T0) + 2 * WINDOW
    assert (await a.hit("u3", 2, WINDOW, now=T0 + 59.9)).allowed  # per user
