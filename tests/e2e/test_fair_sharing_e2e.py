"""Per-user max_in_flight, the queue behind it and its cap, through the public API
(DESIGN §16): real gateway, auth, orchestrator and agents; real Kafka, PostgreSQL, Redis."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from spine_servicekit.kafka import KafkaConfig

from .test_gateway_e2e import MASTER, Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(kafka, infra, topic_prefix, flows=("echo_chain",)) as client:
        yield client


async def limited_user(api: Api, **limits: int) -> tuple[str, str]:
    r = await api.http.post(
        "/api/v1/users/create",
        json={"email": f"q{os.urandom(5).hex()}@example.com", "credits": 10, **limits},
        headers=api.auth(MASTER),
    )
    assert r.status_code == 201, r.text
    assert {k: r.json()[k] for k in limits} == limits
    return r.json()["api_key"], r.json()["user_id"]


async def asking_flow(api: Api, key: str) -> str:
    """One echo node that asks for input: the execution stays in flight until answered."""
    flow = {
        "flow_id": f"ask_{os.urandom(3).hex()}",
        "nodes": [{"id": "ask", "agent_id": "echo", "config": {"needs_input": True}}],
    }
    r = await api.http.post("/api/v1/flows", json=flow, headers=api.auth(key))
    assert r.status_code == 201, r.text
    return str(flow["flow_id"])


async def balance(api: Api, key: str) -> int:
    r = await api.http.get("/api/v1/users/me", headers=api.auth(key))
    return int(r.json()["balance"])


async def eventually(check: Any, within: float = 30) -> None:
    """For reads of a projection that follows an event this test cannot subscribe to (the
    refund of a settle has no public event to await)."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_beyond_max_in_flight_executions_queue_and_start_when_a_slot_frees(
    api: Api,
) -> None:
    key, _ = await limited_user(api, max_in_flight=1, max_queued=1)
    h = api.auth(key)
    flow_id = await asking_flow(api, key)
    first = await api.execute(key, flow_id, {"n": 1})
    assert first.status_code == 200 and first.json()["status"] == "running", first.text
    e1 = first.json()["execution_id"]
    await api.sse_until(key, e1, "execution.node_waiting_input")

    # the user's slot is taken: the next is accepted and answered at once, queued
    second = await api.execute(key, flow_id, {"n": 2})
    assert second.status_code == 200 and second.json()["status"] == "queued", second.text
    e2 = second.json()["execution_id"]
    got = (await api.http.get(f"/api/v1/executions/{e2}", headers=h)).json()
    assert got["status"] == "queued"
    trail = (await api.http.get(f"/api/v1/executions/{e2}/events", headers=h)).json()["events"]
    assert [(e["type"], e["seq"]) for e in trail] == [("execution.queued", 1)]
    assert await balance(api, key) == 8  # both hold their credits

    # the queue (max_queued 1) is full: 503 with Retry-After, nothing reserved
    third = await api.execute(key, flow_id, {"n": 3})
    assert third.status_code == 503, third.text
    assert third.json()["code"] == "QUEUE_FULL" and int(third.headers["Retry-After"]) > 0
    assert await balance(api, key) == 8

    # cancelling the queued one refunds it, and makes room in the queue
    r = await api.http.post(f"/api/v1/executions/{e2}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text

    async def refunded() -> bool:
        return await balance(api, key) == 9

    await eventually(refunded)
    again = await api.execute(key, flow_id, {"n": 4})
    assert again.json()["status"] == "queued", again.text
    e3 = again.json()["execution_id"]

    # the first one ends: its settle frees the slot and auth releases the queued one
    r = await api.http.post(f"/api/v1/executions/{e1}/input", json={"input": {"ok": 1}}, headers=h)
    assert r.status_code == 200, r.text
    done = await api.sse(key, e1)
    assert done[-1]["event"] == "execution.completed", done[-1]
    released = await api.sse_until(key, e3, "execution.node_waiting_input")
    types = [e["event"] for e in released]
    assert types[:2] == ["execution.queued", "execution.started"], types
    assert [e["id"] for e in released] == list(range(1, len(released) + 1))
    await api.http.post(f"/api/v1/executions/{e3}/cancel", headers=h)


async def test_the_admin_raises_a_users_limit_and_the_queue_drains(api: Api) -> None:
    key, user_id = await limited_user(api, max_in_flight=1)
    h = api.auth(key)
    flow_id = await asking_flow(api, key)
    ids = [(await api.execute(key, flow_id, {"n": i})).json() for i in range(3)]
    assert [x["status"] for x in ids] == ["running", "queued", "queued"], ids
    r = await api.http.patch(
        f"/api/v1/users/{user_id}/limits", json={"max_in_flight": 3}, headers=api.auth(MASTER)
    )
    assert r.status_code == 200 and r.json()["max_in_flight"] == 3, r.text
    for x in ids[1:]:
        events = await api.sse_until(key, x["execution_id"], "execution.node_waiting_input")
        assert "execution.started" in [e["event"] for e in events]
    # not the admin: 403; an unknown user: 404; a bad value: 422
    r = await api.http.patch(
        f"/api/v1/users/{user_id}/limits", json={"max_in_flight": 9}, headers=h
    )
    assert r.status_code == 403, r.text
    r = await api.http.patch(
        "/api/v1/users/nobody_here/limits", json={"max_in_flight": 2}, headers=api.auth(MASTER)
    )
    assert r.status_code == 404, r.text
    r = await api.http.patch(
        f"/api/v1/users/{user_id}/limits", json={"max_in_flight": 0}, headers=api.auth(MASTER)
    )
    assert r.status_code == 422, r.text
    for x in ids:
        await api.http.post(f"/api/v1/executions/{x['execution_id']}/cancel", headers=h)
