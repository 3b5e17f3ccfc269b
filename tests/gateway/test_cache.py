"""The request path's cache of key → user and flow rows (pure, no I/O)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from spine_contracts import (
    CreditsAdded,
    FlowDefined,
    FlowDefinition,
    FlowDeleted,
    FlowNode,
    KeyRevoked,
    KeyRotated,
    Message,
)
from spine_gateway.cache import ReadCache, drop_changed_credentials, drop_changed_flows
from spine_gateway.keys import hash_key
from spine_servicekit.projector import Incoming

H1, H2, H3 = (hash_key(f"sk_{i}") for i in range(3))


def incoming(message: Message) -> Incoming:
    return Incoming("t", 0, 0, None, 0, message)


class Loads:
    def __init__(self, rows: dict[str, dict[str, object]]) -> None:
        self.rows = rows
        self.count = 0

    def of(self, key: str):  # type: ignore[no-untyped-def]
        async def load() -> dict[str, object] | None:
            self.count += 1
            return self.rows.get(key)

        return load


async def test_loads_once_then_answers_from_memory_and_never_caches_a_miss() -> None:
    cache: ReadCache[str, dict[str, object]] = ReadCache()
    loads = Loads({H1: {"user_id": "u1", "key_hash": H1}})
    for _ in range(3):
        assert await cache.get(H1, loads.of(H1)) == {"user_id": "u1", "key_hash": H1}
    assert loads.count == 1
    assert await cache.get(H2, loads.of(H2)) is None
    loads.rows[H2] = {"user_id": "u2", "key_hash": H2}  # a new user's key works at once
    assert await cache.get(H2, loads.of(H2)) == {"user_id": "u2", "key_hash": H2}


@dataclass(frozen=True)
class Cred:
    user_id: str


async def test_a_rotated_key_is_dropped_and_a_balance_change_is_not() -> None:
    cache: ReadCache[str, Cred] = ReadCache()
    loads = Loads({H1: Cred("u1"), H3: Cred("u3")})
    await cache.get(H1, loads.of(H1))
    await cache.get(H3, loads.of(H3))
    hook = drop_changed_credentials(cache)
    hook([incoming(CreditsAdded.build(user_id="u1", amount=5, balance=10))])
    assert len(cache) == 2
    hook([incoming(KeyRotated.build(user_id="u1", key_hash=H2, previous_key_hash=H1))])
    del loads.rows[H1]  # the read model no longer knows the old key
    assert await cache.get(H1, loads.of(H1)) is None
    assert len(cache) == 1  # u3 kept
    hook([incoming(KeyRevoked.build(user_id="u3", key_id="key_x", key_hash=H3))])
    assert len(cache) == 0  # a revoked key is forgotten at once


async def test_a_load_that_raced_a_change_is_not_kept() -> None:
    cache: ReadCache[str, Cred] = ReadCache()
    release = asyncio.Event()

    async def slow_old_row() -> Cred:
        await release.wait()
        return Cred("u1")  # read before the rotation committed

    pending = asyncio.create_task(cache.get(H1, slow_old_row))
    await asyncio.sleep(0)
    drop_changed_credentials(cache)(
        [incoming(KeyRotated.build(user_id="u1", key_hash=H2, previous_key_hash=H1))]
    )
    release.set()
    assert await pending == Cred("u1")  # this request still used it ...
    assert len(cache) == 0  # ... but the next one reads again


async def test_flows_are_dropped_when_defined_again_or_deleted() -> None:
    cache: ReadCache[str, str] = ReadCache()

    async def value() -> str:
        return "row"

    for fid in ("f1", "f2", "f3"):
        await cache.get(fid, value)
    flow = FlowDefinition(flow_id="f1", nodes=(FlowNode(id="a", agent_id="echo"),))
    drop_changed_flows(cache)(
        [
            incoming(
                FlowDefined.build(
                    flow_id="f1", flow_version=flow.content_hash(), definition=flow, source="api"
                )
            ),
            incoming(FlowDeleted.build(flow_id="f2", source="api")),
        ]
    )
    assert len(cache) == 1


async def test_bounded_oldest_half_first() -> None:
    cache: ReadCache[int, int] = ReadCache(limit=4)
    for i in range(5):

        async def load(i: int = i) -> int:
            return i

        await cache.get(i, load)
    assert len(cache) == 3  # 0 and 1 went when the fifth came
