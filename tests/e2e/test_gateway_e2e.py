"""The HTTP gateway end to end: real service and agent processes, real Kafka/PG/Redis.

Only the public HTTP API is used; every write is checked to be visible on the very next
request (read-your-writes), and completion is awaited through the SSE stream.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio
from spine_servicekit.kafka import KafkaConfig

from .harness import ROOT, Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

MASTER = "test-master-key-0123456789"
APPLICANT = {"name": "Ana", "income": 6000, "amount": 12000, "term_months": 24, "debts": 300}
TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    def __init__(self, base: str) -> None:
        self.http = httpx.AsyncClient(base_url=base, timeout=30.0)
        self.stack: Stack | None = None
        self.env: dict[str, str] = {}

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def create_user(self, credits: int = 5, rate_limit: int = 1000) -> dict[str, Any]:
        email = f"u{os.urandom(5).hex()}@example.com"
        r = await self.http.post(
            "/api/v1/users/create",
            json={"email": email, "name": "T", "credits": credits, "rate_limit": rate_limit},
            headers=self.auth(MASTER),
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    async def execute(
        self, key: str, flow_id: str = "credit_analysis", input_data: Any = None, **kw: Any
    ) -> httpx.Response:
        body = {"flow_id": flow_id, "input_data": APPLICANT if input_data is None else input_data}
        headers = {**self.auth(key), **kw.pop("headers", {})}
        return await self.http.post("/api/v1/flows/execute", json=body, headers=headers)

    async def sse(
        self, key: str, execution_id: str, last_event_id: int | None = None
    ) -> list[dict[str, Any]]:
        """Every SSE event of the execution, until the stream ends after the terminal one."""
        headers = self.auth(key)
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        events: list[dict[str, Any]] = []
        current: dict[str, Any] = {}
        async with (
            asyncio.timeout(90),
            self.http.stream(
                "GET", f"/api/v1/executions/{execution_id}/stream", headers=headers
            ) as r,
        ):
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                line = line.rstrip("\r")
                if not line:
                    if "data" in current:
                        events.append(current)
                    current = {}
                    continue
                name, _, value = line.partition(":")
                value = value.lstrip(" ")
                if name == "id":
                    current["id"] = int(value)
                elif name == "event":
                    current["event"] = value
                elif name == "data":
                    current["data"] = orjson.loads(value)
        return events


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    base = topic_prefix.strip(".")
    schemas = {n: f"{base}_{n}" for n in ("orc", "reg", "auth", "gw")}
    port = _free_port()
    env = {
        **os.environ,
        **infra,
        "SPINE_TOPIC_PREFIX": topic_prefix,
        "SPINE_TOPIC_PARTITIONS": str(kafka.partitions),
        "FLOWS_DIR": str(ROOT / "flows"),
        "SPINE_ORCHESTRATOR_SCHEMA": schemas["orc"],
        "SPINE_REGISTRY_SCHEMA": schemas["reg"],
        "SPINE_AUTH_SCHEMA": schemas["auth"],
        "SPINE_GATEWAY_SCHEMA": schemas["gw"],
        "SPINE_HEARTBEAT_INTERVAL": "1",
        "API_KEY": MASTER,
        "API_KEY_REQUIRED": "true",
        "DEV_MODE": "false",
        "PORT": str(port),
        "API_HOST": "127.0.0.1",
        "LOG_LEVEL": "INFO",
    }
    stack = Stack(kafka, env)
    await stack.start("registry", "orchestrator", "auth", "echo", "zoe", "eddie", "gateway")
    client = Api(f"http://127.0.0.1:{port}")
    client.stack = stack
    client.env = env
    try:
        await stack.agents_active("echo", "zoe", "eddie")
        async with asyncio.timeout(90):  # a process's port has no event to await
            while True:
                try:
                    if (await client.http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert stack.procs["gateway"].returncode is None, "gateway exited"
                await asyncio.sleep(0.2)
            probe = await client.create_user()
            while True:  # the orchestrator publishes the repository's flows at start
                r = await client.http.get("/api/v1/flows", headers=client.auth(probe["api_key"]))
                if {"credit_analysis", "echo_chain"} <= {f["flow_id"] for f in r.json()["flows"]}:
                    break
                await asyncio.sleep(0.2)
        yield client
    finally:
        await client.http.aclose()
        await stack.stop()
        conn = await asyncpg.connect(infra["DATABASE_URL"])
        try:
            for schema in (*schemas.values(), f"{base}_gwdev"):
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def test_new_user_executes_and_streams_to_completion(api: Api) -> None:
    user = await api.create_user(credits=5)
    key = user["api_key"]
    assert key.startswith("sk_") and len(key) == 46
    me = await api.http.get("/api/v1/users/me", headers=api.auth(key))  # the key works at once
    assert me.status_code == 200 and me.json()["credits"] == 5, me.text
    assert "api_key" not in me.json()

    r = await api.execute(key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"execution_id", "status", "created_at"}
    eid = body["execution_id"]
    got = await api.http.get(f"/api/v1/executions/{eid}", headers=api.auth(key))
    assert got.status_code == 200, got.text  # read-your-writes
    assert got.json()["flow_id"] == "credit_analysis"

    events = await api.sse(key, eid)
    assert events[-1]["event"] == "execution.completed"
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    done = (await api.http.get(f"/executions/{eid}", headers=api.auth(key))).json()  # root alias
    assert done["status"] == "completed"
    assert done["output_data"]["result"]["decision"] in {"approve", "review", "reject"}
    assert done["completed_at"] and done["nodes"]
    results = await api.http.get(f"/api/v1/executions/{eid}/results", headers=api.auth(key))
    assert results.json()["status"] == "completed" and results.json()["nodes"]
    msgs = (await api.http.get(f"/messages/{eid}", headers=api.auth(key))).json()["messages"]
    assert msgs and all("payload" in m for m in msgs)
    trail = await api.http.get(f"/api/v1/executions/{eid}/events", headers=api.auth(key))
    assert [e["seq"] for e in trail.json()["events"]] == ids
    listed = (await api.http.get("/api/v1/executions", headers=api.auth(key))).json()
    assert [e["execution_id"] for e in listed["executions"]] == [eid]

    # SSE resume: only what came after Last-Event-ID
    later = await api.sse(key, eid, last_event_id=ids[1])
    assert [e["id"] for e in later] == ids[2:]


async def test_unauthenticated_and_bad_requests(api: Api) -> None:
    r = await api.http.post("/api/v1/flows/execute", json={"flow_id": "credit_analysis"})
    assert r.status_code == 401
    assert set(r.json()) >= {"detail", "code", "message", "error_code"}
    r = await api.execute("sk_" + "x" * 43)
    assert r.status_code == 401 and r.json()["error_code"] == "INVALID_API_KEY"

    key = (await api.create_user(credits=5))["api_key"]
    for bad in ({}, {"flow_id": 5}, {"flow_id": "credit_analysis", "input_data": [1]}):
        r = await api.http.post("/api/v1/flows/execute", json=bad, headers=api.auth(key))
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error_code"] == "VALIDATION_ERROR"
    r = await api.http.post("/api/v1/flows/execute", content=b"{not json", headers=api.auth(key))
    assert r.status_code == 422
    r = await api.execute(key, flow_id="no_such_flow")
    assert r.status_code == 404 and r.json()["error_code"] == "FLOW_NOT_FOUND"
    r = await api.http.post(
        "/api/v1/users/create", json={"email": "x@example.com"}, headers=api.auth(key)
    )
    assert r.status_code == 403


async def test_other_tenants_execution_is_not_found(api: Api) -> None:
    alice = (await api.create_user(credits=5))["api_key"]
    bob = (await api.create_user(credits=5))["api_key"]
    eid = (await api.execute(alice, "echo_chain", {"x": 1})).json()["execution_id"]
    for path in ("", "/events", "/results", "/messages", "/stream"):
        r = await api.http.get(f"/api/v1/executions/{eid}{path}", headers=api.auth(bob))
        assert r.status_code == 404, (path, r.text)
    r = await api.http.post(f"/api/v1/executions/{eid}/cancel", headers=api.auth(bob))
    assert r.status_code == 404
    assert (await api.http.get("/api/v1/executions", headers=api.auth(bob))).json()["total"] == 0


async def test_concurrent_executions_never_overdraw(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    answers = await asyncio.gather(*(api.execute(key, "echo_chain", {"i": i}) for i in range(30)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(200) == 5 and codes.count(402) == 25, codes
    refused = next(r for r in answers if r.status_code == 402).json()
    assert refused["error_code"] == "INSUFFICIENT_CREDITS"
    # the 402 answers do not wait for the users projection; it follows within moments
    for _ in range(100):
        me = (await api.http.get("/api/v1/users/me", headers=api.auth(key))).json()
        if me["credits"] == 0:
            break
        await asyncio.sleep(0.1)
    assert me["credits"] == 0


async def test_idempotency_key_returns_the_first_execution(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    headers = {"Idempotency-Key": "req-1"}
    first = await api.execute(key, "echo_chain", {"a": 1}, headers=headers)
    again = await api.execute(key, "echo_chain", {"a": 1}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["execution_id"] == again.json()["execution_id"]
    me = (await api.http.get("/api/v1/users/me", headers=api.auth(key))).json()
    assert me["credits"] == 4


async def test_key_rotation_revokes_the_old_key(api: Api) -> None:
    old = (await api.create_user(credits=1))["api_key"]
    r = await api.http.post("/api/v1/users/regenerate-key", headers=api.auth(old))
    assert r.status_code == 200, r.text
    new = r.json()["api_key"]
    assert new != old
    assert (await api.http.get("/api/v1/users/me", headers=api.auth(old))).status_code == 401
    assert (await api.http.get("/api/v1/users/me", headers=api.auth(new))).status_code == 200


async def test_add_credits_then_user_lookup(api: Api) -> None:
    user = await api.create_user(credits=0)
    r = await api.execute(user["api_key"], "echo_chain", {})
    assert r.status_code == 402
    r = await api.http.post(
        "/api/v1/users/add-credits",
        params={"user_id": user["user_id"], "credits": 3},
        headers=api.auth(MASTER),
    )
    assert r.status_code == 200 and r.json()["credits"] == 3, r.text
    r = await api.http.get(f"/api/v1/users/{user['user_id']}", headers=api.auth(MASTER))
    assert r.json()["credits"] == 3
    assert (await api.execute(user["api_key"], "echo_chain", {})).status_code == 200


async def test_rate_limit_answers_429_with_headers(api: Api) -> None:
    key = (await api.create_user(credits=5, rate_limit=3))["api_key"]
    if 60 - time.time() % 60 < 3:  # keep the four requests inside one fixed window
        await asyncio.sleep(60 - time.time() % 60 + 0.1)
    seen = []
    for _ in range(3):
        r = await api.http.get("/api/v1/users/me", headers=api.auth(key))
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "3"
        seen.append(int(r.headers["X-RateLimit-Remaining"]))
        assert int(r.headers["X-RateLimit-Reset"]) > time.time()
    assert seen == [2, 1, 0]
    r = await api.http.get("/api/v1/users/me", headers=api.auth(key))
    assert r.status_code == 429 and r.json()["error_code"] == "RATE_LIMITED"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers["X-RateLimit-Remaining"] == "0"


async def test_flows_api_and_catalogues(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    h = api.auth(key)
    flow = {"flow_id": "api_echo", "nodes": [{"id": "a", "agent_id": "echo"}]}
    r = await api.http.post("/api/v1/flows", json=flow, headers=h)
    assert r.status_code == 201, r.text
    assert (await api.http.get("/flows/api_echo", headers=h)).json()["source"] == "api"
    r = await api.http.put(
        "/api/v1/flows/echo_chain",
        json={"flow_id": "echo_chain", "nodes": [{"id": "a", "agent_id": "echo"}]},
        headers=h,
    )
    assert r.status_code == 200 and r.json()["replaced_source"] == "file", r.text
    bad = {"flow_id": "bad", "nodes": [{"id": "a", "depends_on": ["zzz"]}]}
    r = await api.http.post("/api/v1/flows", json=bad, headers=h)
    assert r.status_code == 422 and r.json()["error_code"] == "INVALID_FLOW", r.text
    assert (await api.execute(key, "api_echo", {"x": 1})).status_code == 200
    assert (await api.http.delete("/api/v1/flows/api_echo", headers=h)).status_code == 200
    assert (await api.http.get("/api/v1/flows/api_echo", headers=h)).status_code == 404

    agents = (await api.http.get("/agents", headers=h)).json()["agents"]
    assert {"echo", "zoe", "eddie"} <= {a["agent_id"] for a in agents}
    assert (await api.http.get("/api/v1/agents/zoe", headers=h)).status_code == 200
    assert (await api.http.get("/api/v1/agents/nope", headers=h)).status_code == 404

    status = (await api.http.get("/status")).json()
    assert status["components"]["kafka"]["status"] == "ok"
    assert {"gateway", "auth", "orchestrator"} <= {s["service"] for s in status["services"]}
    m = await api.http.get("/metrics", headers={"Accept": "application/json"})
    assert m.json()["executions"]["total"] >= 1
    text = await api.http.get("/metrics")
    assert "spine_gateway_requests_total" in text.text


async def test_dev_mode_replica_serves_anonymous_requests(api: Api) -> None:
    """A second replica with API_KEY_REQUIRED=false: a built-in user, its own replies."""
    assert api.stack is not None
    port = _free_port()
    schema = api.env["SPINE_GATEWAY_SCHEMA"] + "dev"
    await api.stack.spawn(
        "gateway#dev",
        {"API_KEY_REQUIRED": "false", "PORT": str(port), "SPINE_GATEWAY_SCHEMA": schema},
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as dev:
        async with asyncio.timeout(60):  # start-up and the dev user's creation
            while True:
                try:
                    r = await dev.get("/api/v1/users/me")
                    if r.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        assert r.json()["user_id"] == "dev" and r.json()["credits"] > 0
        r = await dev.post("/flows/execute", json={"flow_id": "echo_chain", "input_data": {}})
        assert r.status_code == 200, r.text
        # both replicas answer concurrently; each gets only its own replies
        key = (await api.create_user(credits=2))["api_key"]
        for _ in range(50):  # the other replica's projection follows within moments
            if (await dev.get("/api/v1/users/me", headers=api.auth(key))).status_code == 200:
                break
            await asyncio.sleep(0.1)
        a, b = await asyncio.gather(
            api.execute(key, "echo_chain", {}),
            dev.post(
                "/api/v1/flows/execute",
                json={"flow_id": "echo_chain"},
                headers=api.auth(key),
            ),
        )
        assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
