"""``GET /executions`` (filters, keyset pagination) and ``GET /users`` on a real stack.

10,000 executions through execute would take minutes, so their ``execution.started`` (and a
few terminal) events go straight onto the stack's events topic; the gateway's real projector
applies them (real Kafka, real PostgreSQL), and the test awaits that through the API. The
users are real ones (``users/create`` through auth).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from spine_contracts import (
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionQueued,
    ExecutionStarted,
    FlowDefinition,
    Message,
    topics,
)
from spine_servicekit.kafka import KafkaConfig

from .test_gateway_e2e import MASTER, Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

N = 10_000
FLOW = FlowDefinition.model_validate({"flow_id": "lst", "nodes": [{"id": "a", "agent_id": "echo"}]})
FLOWS = ("flow_a", "flow_b", "flow_c", "flow_d")
#: two executions per millisecond: ties on created_at, broken by the id
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def at(i: int) -> datetime:
    return T0 + timedelta(milliseconds=i // 2)


@dataclass
class World:
    api: Api
    alice: dict[str, Any]
    bob: dict[str, Any]
    run: str  # the id prefix of this module's pre-existing executions
    bob_ids: list[str]

    def eid(self, i: int) -> str:
        return f"{self.run}-{i:05d}"

    def h(self, who: dict[str, Any] | None = None) -> dict[str, str]:
        return Api.auth(who["api_key"] if who is not None else MASTER)

    async def list(self, who: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
        r = await self.api.http.get("/api/v1/executions", params=params, headers=self.h(who))
        assert r.status_code == 200, r.text
        return dict(r.json())


def started(
    eid: str, user_id: str, flow_id: str, when: datetime, *, queued: bool = False
) -> tuple[str, Message]:
    kind = ExecutionQueued if queued else ExecutionStarted
    message = kind.build(
        correlation_id=eid,
        tenant_id=user_id,
        execution_id=eid,
        seq=0,
        user_id=user_id,
        flow_id=flow_id,
        flow_version="v1",
        flow=FLOW,
        input_data={"i": eid},
    )
    return eid, message.model_copy(update={"occurred_at": when})


def ended(eid: str, user_id: str, when: datetime, *, failed: bool) -> tuple[str, Message]:
    message: Message
    if failed:
        message = ExecutionFailed.build(
            correlation_id=eid, tenant_id=user_id, execution_id=eid, seq=1, error_message="no"
        )
    else:
        message = ExecutionCompleted.build(
            correlation_id=eid, tenant_id=user_id, execution_id=eid, seq=1, output_data={}
        )
    return eid, message.model_copy(update={"occurred_at": when})


def alice_events(w: World) -> Iterator[tuple[str, Message]]:
    """Alice's 10,000: flows in turn; i % 10 == 3 failed, == 5 completed, == 7 queued."""
    uid = w.alice["user_id"]
    for i in range(N):
        eid = w.eid(i)
        yield started(eid, uid, FLOWS[i % 4], at(i), queued=i % 10 == 7)
        if i % 10 in (3, 5):
            yield ended(eid, uid, at(i) + timedelta(seconds=1), failed=i % 10 == 3)


async def until(check: Any, within: float = 120) -> None:
    """Poll the API until ``check()`` holds (a read model has no event to await over HTTP)."""
    async with asyncio.timeout(within):
        while True:
            if await check():
                return
            await asyncio.sleep(0.2)


@pytest_asyncio.fixture(scope="module", loop_scope="session", name="w")
async def world(
    kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str
) -> AsyncIterator[World]:
    async with gateway_stack(
        kafka, infra, topic_prefix, services=("auth", "gateway"), agents=(), flows=()
    ) as api:
        alice = await api.create_user(credits=1, rate_limit=1_000_000)
        bob = await api.create_user(credits=1, rate_limit=1_000_000)
        w = World(api, alice, bob, os.urandom(4).hex(), [f"bob-{i}" for i in range(5)])
        assert api.stack is not None
        await api.stack.publish_many(topics.EXECUTION_EVENTS, alice_events(w))
        await api.stack.publish_many(
            topics.EXECUTION_EVENTS,
            (started(e, bob["user_id"], "flow_b", at(i)) for i, e in enumerate(w.bob_ids)),
        )

        async def projected() -> bool:
            a = await w.list(alice, limit=1)
            done = await w.list(alice, limit=1, status="failed,completed")
            b = await w.list(bob, limit=1)
            return bool(a["total"] == N and done["total"] == N // 5 and b["total"] == 5)

        await until(projected)
        yield w


def key(view: dict[str, Any]) -> tuple[datetime, str]:
    return datetime.fromisoformat(view["created_at"]), view["execution_id"]


async def test_keyset_pages_return_each_execution_once_while_new_ones_arrive(w: World) -> None:
    uid = w.alice["user_id"]
    stop = asyncio.Event()
    arrived: list[str] = []
    assert w.api.stack is not None
    stack = w.api.stack
    turn = asyncio.Event()  # a page was read: 20 more arrive (paced, not a flood)

    async def arrivals() -> None:
        n = 0
        while True:
            await turn.wait()
            turn.clear()
            if stop.is_set():
                return
            batch = [f"new-{w.run}-{n + j}" for j in range(20)]
            now = datetime.now(UTC)
            await stack.publish_many(
                topics.EXECUTION_EVENTS, (started(e, uid, "arrivals", now) for e in batch)
            )
            arrived.extend(batch)
            n += len(batch)

    publisher = asyncio.create_task(arrivals())
    try:
        seen: list[dict[str, Any]] = []
        totals: list[int] = []
        page = await w.list(w.alice, limit=250)
        turn.set()

        async def grown() -> bool:  # new ones are in the store before the second page
            return bool((await w.list(w.alice, limit=1))["total"] > page["total"])

        await until(grown)
        while True:
            seen.extend(page["executions"])
            totals.append(page["total"])
            if page["next_cursor"] is None:
                break
            assert len(page["executions"]) == 250
            page = await w.list(w.alice, limit=250, cursor=page["next_cursor"])
            turn.set()
    finally:
        stop.set()
        turn.set()
        await publisher
    ids = [v["execution_id"] for v in seen]
    assert len(ids) == len(set(ids)), "an execution was listed twice"
    old = [i for i in ids if not i.startswith("new-")]
    assert old == [w.eid(i) for i in reversed(range(N))]  # each once, newest first
    assert set(ids) - set(old) <= set(arrived)
    keys = [key(v) for v in seen]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)
    assert arrived and totals[-1] > totals[0] >= N, "nothing arrived while paging"


async def test_filters(w: World) -> None:
    alice, bob = w.alice, w.bob
    failed = await w.list(alice, status="failed", limit=500)
    assert failed["total"] == N // 10
    assert {v["status"] for v in failed["executions"]} == {"failed"}
    assert {v["execution_id"][-1] for v in failed["executions"]} == {"3"}
    both = await w.list(alice, status=["failed", "queued"], limit=1)
    assert both["total"] == 2 * N // 10 == (await w.list(alice, status="queued,failed"))["total"]

    r = await w.api.http.get("/api/v1/executions?status=bogus", headers=w.h(alice))
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "VALIDATION_ERROR"
    assert "allowed: queued, running, waiting_input" in r.json()["message"]

    flow = await w.list(alice, flow_id="flow_b", limit=500)
    assert flow["total"] == N // 4
    assert {v["flow_id"] for v in flow["executions"]} == {"flow_b"}

    # i in 1000..1999 were created at T0 + 500 ms .. T0 + 999 ms (both ends inclusive)
    window = {
        "created_from": at(1000).isoformat(),
        "created_to": at(1999).isoformat(),
        "limit": 500,
    }
    first = await w.list(alice, **window)
    second = await w.list(alice, **window, cursor=first["next_cursor"])
    assert first["total"] == 1000 and second["next_cursor"] is None
    got = [v["execution_id"] for v in first["executions"] + second["executions"]]
    assert got == [w.eid(i) for i in reversed(range(1000, 2000))]
    r = await w.api.http.get(
        "/api/v1/executions",
        params={"created_from": at(2).isoformat(), "created_to": at(0).isoformat()},
        headers=w.h(alice),
    )
    assert r.status_code == 422 and "created_from" in r.json()["message"], r.text
    for bad in ("yesterday", "0001-01-01T00:00:00+01:00"):  # the second: before year 1 in UTC
        r = await w.api.http.get(
            "/api/v1/executions", params={"created_from": bad}, headers=w.h(alice)
        )
        assert r.status_code == 422, (bad, r.text)

    prefixed = await w.list(alice, id_prefix=f"{w.run}-0012")
    assert [v["execution_id"] for v in prefixed["executions"]] == [
        w.eid(i) for i in reversed(range(120, 130))
    ]
    for bad in ("a%", "a b", "x" * 200):
        r = await w.api.http.get(
            "/api/v1/executions", params={"id_prefix": bad}, headers=w.h(alice)
        )
        assert r.status_code == 422, (bad, r.text)

    for cursor in ("not-a-cursor", "ZTo", first["next_cursor"] + "x"):
        r = await w.api.http.get(
            "/api/v1/executions", params={"cursor": cursor}, headers=w.h(alice)
        )
        assert r.status_code == 422 and "cursor" in r.json()["message"], (cursor, r.text)
    r = await w.api.http.get(
        "/api/v1/executions",
        params={"cursor": first["next_cursor"], "offset": 5},
        headers=w.h(alice),
    )
    assert r.status_code == 422, r.text

    # the deprecated offset still pages (the answer's fields as before, plus next_cursor)
    head = await w.list(alice, **{**window, "limit": 15})
    skipped = await w.list(alice, **{**window, "limit": 5, "offset": 10})
    assert skipped["offset"] == 10 and skipped["limit"] == 5 and skipped["total"] == 1000
    assert skipped["executions"] == head["executions"][10:]

    # another tenant's executions never appear, whatever the filter
    mine = await w.list(bob, limit=500)
    assert [v["execution_id"] for v in mine["executions"]] == list(reversed(w.bob_ids))
    assert (await w.list(bob, user_id=alice["user_id"]))["executions"] == []
    assert (await w.list(bob, id_prefix=w.run))["total"] == 0
    assert (await w.list(bob, flow_id="flow_b"))["total"] == 5
    assert (await w.list(alice, id_prefix="bob-"))["total"] == 0


async def test_the_admin_lists_every_tenant_and_filters_by_user(w: World) -> None:
    everyone = await w.list(None, limit=500)
    assert everyone["total"] >= N + 5
    only_bob = await w.list(None, user_id=w.bob["user_id"], limit=2)
    assert only_bob["total"] == 5
    ids = [v["execution_id"] for v in only_bob["executions"]]
    while only_bob["next_cursor"] is not None:
        only_bob = await w.list(
            None, user_id=w.bob["user_id"], limit=2, cursor=only_bob["next_cursor"]
        )
        ids += [v["execution_id"] for v in only_bob["executions"]]
    assert ids == list(reversed(w.bob_ids))
    queued = await w.list(None, status="queued", limit=1)
    assert queued["total"] == N // 10


async def test_the_admin_lists_users_by_cursor_without_key_material(w: World) -> None:
    created = [await w.api.create_user() for _ in range(3)]
    users: list[dict[str, Any]] = []
    page = (await w.api.http.get("/api/v1/users?limit=2", headers=w.h())).json()
    while True:
        users += page["users"]
        if page["next_cursor"] is None:
            break
        r = await w.api.http.get(
            "/api/v1/users", params={"limit": 2, "cursor": page["next_cursor"]}, headers=w.h()
        )
        assert r.status_code == 200, r.text
        page = r.json()
    ids = [u["user_id"] for u in users]
    assert len(ids) == len(set(ids)) == page["total"]
    expected = [u["user_id"] for u in (w.alice, w.bob, *created)]
    assert [i for i in ids if i in expected] == list(reversed(expected))  # newest first
    one = next(u for u in users if u["user_id"] == w.alice["user_id"])
    assert one["email"] == w.alice["email"] and one["balance"] == 1
    assert {"name", "organization", "rate_limit", "max_in_flight", "created_at"} <= set(one)
    text = str(users)
    assert "key" not in text and w.alice["api_key"] not in text
    root = await w.api.http.get("/users?limit=1", headers=w.h())  # the root alias
    assert root.status_code == 200 and len(root.json()["users"]) == 1

    r = await w.api.http.get("/api/v1/users", headers=w.h(w.alice))
    assert r.status_code == 403 and r.json()["code"] == "ADMIN_REQUIRED", r.text
    r = await w.api.http.get("/api/v1/users?cursor=bad!", headers=w.h())
    assert r.status_code == 422, r.text
    cursor = (await w.list(w.alice, limit=1))["next_cursor"]  # an executions cursor
    r = await w.api.http.get("/api/v1/users", params={"cursor": cursor}, headers=w.h())
    assert r.status_code == 422, r.text
