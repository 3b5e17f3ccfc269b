"""The HTTP gateway end to end: real service and agent processes, real Kafka/PG/Redis.

Only the public HTTP API is used; every write is checked to be visible on the very next
request (read-your-writes), and completion is awaited through the SSE stream.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import pytest_asyncio
from spine_servicekit.kafka import KafkaConfig

from .harness import ROOT, Stack, expected_services

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

MASTER = "test-master-key-0123456789"
#: the operators' Prometheus scrape token (SPINE_METRICS_SCRAPE_TOKEN) of every test stack
SCRAPE = "test-scrape-token-0123456789"
APPLICANT = {"name": "Ana", "income": 6000, "amount": 12000, "term_months": 24, "debts": 300}
TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}
FULL_STACK = ("registry", "orchestrator", "auth", "echo", "zoe", "eddie", "gateway")


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
        """Every SSE event of the execution, until the terminal one (the stream ends there)."""
        return await self.sse_until(key, execution_id, after=last_event_id)

    async def sse_until(
        self, key: str, execution_id: str, *types: str, after: int | None = None
    ) -> list[dict[str, Any]]:
        """The SSE events up to and including the first of ``types`` (or the terminal one);
        the gateway's read model shows everything they say once they arrived."""
        events: list[dict[str, Any]] = []
        last = None if after is None else str(after)
        async with asyncio.timeout(90), aclosing(self.sse_events(key, execution_id, last)) as sse:
            async for event in sse:
                events.append(event)
                if event["event"] in types or event["event"] in TERMINAL:
                    break
        return events

    async def sse_events(
        self, key: str, execution_id: str, last_event_id: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The execution's SSE events as they arrive (``{"id", "event", "data"}``); leaving
        the loop closes the connection, as a client that goes away does."""
        headers = self.auth(key)
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        path = f"/api/v1/executions/{execution_id}/stream"
        async with self.http.stream("GET", path, headers=headers) as r:
            assert r.status_code == 200, await r.aread()
            async for event in sse_frames(r, ids=int):
                yield event


async def sse_frames(
    r: httpx.Response, ids: Callable[[str], Any] = str
) -> AsyncIterator[dict[str, Any]]:
    """An open SSE response's events as ``{"id", "event", "data"}`` (``ids`` reads the id;
    ``data`` is decoded JSON); events without data (keep-alives) are skipped."""
    current: dict[str, Any] = {}
    async for line in r.aiter_lines():
        line = line.rstrip("\r")
        if line:
            name, _, value = line.partition(":")
            value = value.lstrip(" ")
            if name == "id":
                current["id"] = ids(value)
            elif name == "event":
                current["event"] = value
            elif name == "data":
                current["data"] = orjson.loads(value)
            continue
        if "data" in current:
            yield current
        current = {}


def _stack_env(
    kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str, port: int
) -> tuple[dict[str, str], dict[str, str]]:
    base = topic_prefix.strip(".")
    schemas = {n: f"{base}_{n}" for n in ("orc", "reg", "auth", "gw")}
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
        "SPINE_GATEWAY_LAG_CACHE": "0.5",
        "API_KEY": MASTER,
        "SPINE_METRICS_SCRAPE_TOKEN": SCRAPE,
        "API_KEY_REQUIRED": "true",
        "DEV_MODE": "false",
        "PORT": str(port),
        "API_HOST": "127.0.0.1",
        "LOG_LEVEL": "INFO",
    }
    return env, schemas


async def wait_http(api: Api, path: str = "/health", within: float = 90) -> None:
    assert api.stack is not None
    async with asyncio.timeout(within):  # a process's port has no event to await
        while True:
            try:
                if (await api.http.get(path)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            gateway = api.stack.procs.get("gateway")
            assert gateway is None or gateway.returncode is None, "gateway exited"
            await asyncio.sleep(0.2)


@asynccontextmanager
async def gateway_stack(
    kafka: KafkaConfig,
    infra: dict[str, str],
    topic_prefix: str,
    services: tuple[str, ...] = FULL_STACK,
    agents: tuple[str, ...] = ("echo", "zoe", "eddie"),
    flows: tuple[str, ...] = ("credit_analysis", "echo_chain"),
    env: dict[str, str] | None = None,
) -> AsyncIterator[Api]:
    """Real service processes with the module's topic prefix and fresh schemas, a gateway on
    a free port; yields once the agents are active and the flows listed."""
    port = _free_port()
    stack_env, schemas = _stack_env(kafka, infra, topic_prefix, port)
    stack_env["SPINE_EXPECTED_SERVICES"] = expected_services(services, agents)
    stack_env.update(env or {})
    stack = Stack(kafka, stack_env)
    api = Api(f"http://127.0.0.1:{port}")
    api.stack = stack
    api.env = stack_env
    try:
        await stack.start(*services)
        await stack.agents_active(*agents)
        await wait_http(api)
        if flows:
            probe = await api.create_user()
            async with asyncio.timeout(90):
                while True:  # the orchestrator publishes the repository's flows at start
                    r = await api.http.get("/api/v1/flows", headers=api.auth(probe["api_key"]))
                    if set(flows) <= {f["flow_id"] for f in r.json()["flows"]}:
                        break
                    await asyncio.sleep(0.2)
        yield api
    finally:
        await api.http.aclose()
        await stack.stop()
        conn = await asyncpg.connect(infra["DATABASE_URL"])
        try:
            base = topic_prefix.strip(".")
            for schema in (*schemas.values(), f"{base}_gwdev"):
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    metrics_port = str(_free_port())
    async with gateway_stack(
        kafka,
        infra,
        topic_prefix,
        services=(*FULL_STACK, "spine-metrics"),
        env={"SPINE_METRICS_PORT": metrics_port, "SPINE_METRICS_SUMMARY_INTERVAL": "0.5"},
    ) as client:
        yield client


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


# --- SSE resume ----------------------------------------------------------------------------


async def _held_flow(api: Api, key: str) -> str:
    """echo, then echo asking for input (the execution waits there), then echo."""
    flow = {
        "flow_id": f"held_{os.urandom(3).hex()}",
        "nodes": [
            {"id": "a", "agent_id": "echo"},
            {"id": "ask", "agent_id": "echo", "depends_on": ["a"], "config": {"needs_input": True}},
            {"id": "c", "agent_id": "echo", "depends_on": ["ask"]},
        ],
    }
    r = await api.http.post("/api/v1/flows", json=flow, headers=api.auth(key))
    assert r.status_code == 201, r.text
    return str(flow["flow_id"])


async def test_sse_resumes_mid_flight_with_exactly_the_events_after_last_event_id(
    api: Api,
) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    h = api.auth(key)
    eid = (await api.execute(key, await _held_flow(api, key), {"x": 1})).json()["execution_id"]
    first = await api.sse_until(key, eid, "execution.node_waiting_input")  # then disconnect
    seen = [e["id"] for e in first]
    assert first[-1]["event"] == "execution.node_waiting_input" and len(seen) >= 4, first
    cut = seen[len(seen) // 2]  # resume mid-way: stored events first, then live ones

    resumed: list[dict[str, Any]] = []
    async with asyncio.timeout(90), aclosing(api.sse_events(key, eid, str(cut))) as sse:
        async for event in sse:
            resumed.append(event)
            if event["id"] == seen[-1]:  # caught up while the execution is held: go on
                r = await api.http.post(
                    f"/api/v1/executions/{eid}/input", json={"input": {"message": "hi"}}, headers=h
                )
                assert r.status_code == 200, r.text
            if event["event"] in TERMINAL:
                break
    ids = [e["id"] for e in resumed]
    assert ids == list(range(cut + 1, ids[-1] + 1)), ids  # no gap, no repeat, in order
    assert ids[-1] > seen[-1]  # events written after the reconnect came on the stream
    assert resumed[-1]["event"] == "execution.completed"
    assert [e["event"] for e in resumed].count("execution.input_received") == 1
    trail = (await api.http.get(f"/api/v1/executions/{eid}/events", headers=h)).json()
    assert [e["seq"] for e in trail["events"]] == seen[: seen.index(cut) + 1] + ids
    assert [e["type"] for e in trail["events"]][seen.index(cut) + 1 :] == [
        e["event"] for e in resumed
    ]


async def test_sse_refuses_a_bad_last_event_id(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    h = api.auth(key)
    eid = (await api.execute(key, "echo_chain", {"x": 1})).json()["execution_id"]
    everything = await api.sse(key, eid)
    assert everything[-1]["event"] == "execution.completed"
    path = f"/api/v1/executions/{eid}/stream"
    for bad in ("abc", "1.5", "0x10", "7; drop", "9" * 40):
        r = await api.http.get(path, headers={**h, "Last-Event-ID": bad})
        assert r.status_code == 422, (bad, r.status_code, r.text)
        body = r.json()
        assert set(body) >= {"detail", "code", "message", "error_code"}, body
        assert body["error_code"] == "VALIDATION_ERROR", body
    # A negative id comes before every event: the whole trail, as without the header.
    whole = await api.sse(key, eid, last_event_id=-5)
    assert [e["id"] for e in whole] == [e["id"] for e in everything]


async def test_sse_last_event_id_beyond_any_sequence_number_is_422(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    eid = (await api.execute(key, "echo_chain", {"x": 1})).json()["execution_id"]
    assert (await api.sse(key, eid))[-1]["event"] == "execution.completed"
    path = f"/api/v1/executions/{eid}/stream"
    for huge in (2**31, 2**63, 10**25):
        async with asyncio.timeout(30):
            r = await api.http.get(path, headers={**api.auth(key), "Last-Event-ID": str(huge)})
        assert r.status_code == 422, (huge, r.status_code, r.text)
        assert r.json()["error_code"] == "VALIDATION_ERROR", r.text


async def test_sse_resumed_after_the_terminal_event_ends_at_once(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    eid = (await api.execute(key, "echo_chain", {"x": 1})).json()["execution_id"]
    last = (await api.sse(key, eid))[-1]
    assert last["event"] == "execution.completed"
    path = f"/api/v1/executions/{eid}/stream"
    async with asyncio.timeout(15):  # an EventSource reconnects after the stream ends
        r = await api.http.get(path, headers={**api.auth(key), "Last-Event-ID": str(last["id"])})
    assert r.status_code in (200, 204), r.text
    assert "data:" not in r.text


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
    # the same key with another request is refused, never the first execution's answer
    for flow_id, data in (("credit_analysis", {"a": 1}), ("echo_chain", {"a": 2})):
        other = await api.execute(key, flow_id, data, headers=headers)
        assert other.status_code == 422, other.text
        assert other.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    # another tenant's identical key is another request
    stranger = (await api.create_user(credits=5))["api_key"]
    theirs = await api.execute(stranger, "echo_chain", {"a": 1}, headers=headers)
    assert theirs.status_code == 200
    assert theirs.json()["execution_id"] != first.json()["execution_id"]
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
    # The limit counts per fixed window. Four requests that a window boundary splits prove
    # nothing either way, so such a run is repeated with a new user (the Reset header names
    # each answer's window) instead of sleeping past a boundary by the wall clock.
    for _ in range(5):
        key = (await api.create_user(credits=5, rate_limit=3))["api_key"]
        sent_at = time.time()
        answers = [await api.http.get("/api/v1/users/me", headers=api.auth(key)) for _ in "1234"]
        if len({r.headers["X-RateLimit-Reset"] for r in answers}) == 1:
            break
    else:
        raise AssertionError("five runs in a row were split by a window boundary")
    *allowed, refused = answers
    for r in allowed:
        assert r.status_code == 200
        assert r.headers["X-RateLimit-Limit"] == "3"
        assert int(r.headers["X-RateLimit-Reset"]) > sent_at
    assert [int(r.headers["X-RateLimit-Remaining"]) for r in allowed] == [2, 1, 0]
    assert refused.status_code == 429 and refused.json()["error_code"] == "RATE_LIMITED"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"


async def test_flows_api_and_catalogues(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    h = api.auth(key)
    flow = {"flow_id": "api_echo", "nodes": [{"id": "a", "agent_id": "echo"}]}
    r = await api.http.post("/api/v1/flows", json=flow, headers=h)
    assert r.status_code == 201, r.text
    assert (await api.http.get("/flows/api_echo", headers=h)).json()["source"] == "api"
    one_node = {"flow_id": "echo_chain", "nodes": [{"id": "a", "agent_id": "echo"}]}
    r = await api.http.put("/api/v1/flows/echo_chain", json=one_node, headers=h)
    assert r.status_code == 403 and r.json()["error_code"] == "NOT_OWNER", r.text  # a system flow
    r = await api.http.put("/api/v1/flows/echo_chain", json=one_node, headers=api.auth(MASTER))
    assert r.status_code == 200 and r.json()["replaced_source"] == "file", r.text
    assert r.json()["owner"] == "system"
    bad = {"flow_id": "bad", "nodes": [{"id": "a", "depends_on": ["zzz"]}]}
    r = await api.http.post("/api/v1/flows", json=bad, headers=h)
    assert r.status_code == 422 and r.json()["error_code"] == "INVALID_FLOW", r.text
    assert (await api.execute(key, "api_echo", {"x": 1})).status_code == 200
    assert (await api.http.delete("/api/v1/flows/api_echo", headers=h)).status_code == 200
    assert (await api.http.get("/api/v1/flows/api_echo", headers=h)).status_code == 404
    # the execute above cached the flow; its deletion is seen by the next one
    r = await api.execute(key, "api_echo", {"x": 1})
    assert r.status_code == 404 and r.json()["error_code"] == "FLOW_NOT_FOUND", r.text

    agents = (await api.http.get("/agents", headers=h)).json()["agents"]
    assert {"echo", "zoe", "eddie"} <= {a["agent_id"] for a in agents}
    assert (await api.http.get("/api/v1/agents/zoe", headers=h)).status_code == 200
    assert (await api.http.get("/api/v1/agents/nope", headers=h)).status_code == 404

    master = api.auth(MASTER)  # the operator's view of /status and /metrics
    status = (await api.http.get("/status", headers=master)).json()
    assert status["components"]["kafka"]["status"] == "ok"
    assert {"gateway", "auth", "orchestrator"} <= {s["service"] for s in status["services"]}
    m = await api.http.get("/metrics", headers={**master, "Accept": "application/json"})
    assert m.json()["executions"]["total"] >= 1
    text = await api.http.get("/metrics", headers=master)
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
        async with asyncio.timeout(180):  # start-up (slow on a loaded machine), the dev user
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
        # administration still needs the master key
        r = await dev.post("/api/v1/users/add-credits", json={"user_id": "dev", "credits": 5})
        assert r.status_code == 403 and r.json()["error_code"] == "ADMIN_REQUIRED", r.text
        r = await dev.post("/api/v1/users/create", json={"email": "x@example.com", "name": "X"})
        assert r.status_code == 403, r.text
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


# --- input, cancel, idempotency of both --------------------------------------------------


async def test_input_answers_a_waiting_credit_analysis_over_two_turns(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    h = api.auth(key)
    r = await api.execute(key, input_data={"name": "Ana"})  # income, amount, term missing
    assert r.status_code == 200, r.text
    eid = r.json()["execution_id"]
    first = await api.sse_until(key, eid, "execution.node_waiting_input")
    assert first[-1]["event"] == "execution.node_waiting_input"
    asked = first[-1]["data"]["data"]
    assert set(asked["missing_fields"]) == {"income", "amount", "term_months"}
    got = (await api.http.get(f"/api/v1/executions/{eid}", headers=h)).json()
    assert got["status"] == "waiting_input" and got["nodes"]["zoe"]["status"] == "waiting_input"

    # turn 1 answers part of it; the answer comes once the read model applied the input
    r = await api.http.post(
        f"/api/v1/executions/{eid}/input", json={"input": {"income": 6000}}, headers=h
    )
    assert r.status_code == 200, r.text
    assert r.json()["node_id"] == "zoe" and r.json()["message"] == "input accepted"
    trail = (await api.http.get(f"/api/v1/executions/{eid}/events", headers=h)).json()
    assert [e["type"] for e in trail["events"]].count("execution.input_received") == 1

    # zoe asks again (turn 2) for what is still missing
    second = await api.sse_until(key, eid, "execution.node_waiting_input", after=first[-1]["id"])
    assert second[-1]["event"] == "execution.node_waiting_input"
    assert set(second[-1]["data"]["data"]["missing_fields"]) == {"amount", "term_months"}
    # three concurrent duplicates with one Idempotency-Key: one input, one answer
    answer = {"input": {"amount": 12000, "term_months": 24}}
    dup = {**h, "Idempotency-Key": f"turn2-{eid}"}
    answers = await asyncio.gather(
        *(
            api.http.post(f"/api/v1/executions/{eid}/input", json=answer, headers=dup)
            for _ in range(3)
        )
    )
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert len({a.text for a in answers}) == 1
    events = await api.sse(key, eid)
    assert events[-1]["event"] == "execution.completed"
    assert [e["event"] for e in events].count("execution.input_received") == 2
    done = (await api.http.get(f"/api/v1/executions/{eid}", headers=h)).json()
    assert done["status"] == "completed"
    assert done["output_data"]["result"]["decision"] in {"approve", "review", "reject"}
    # a later repeat with the key still gets the first answer; without it, 409
    again = await api.http.post(f"/api/v1/executions/{eid}/input", json=answer, headers=dup)
    assert again.status_code == 200 and again.text == answers[0].text
    r = await api.http.post(f"/api/v1/executions/{eid}/input", json=answer, headers=h)
    assert r.status_code == 409 and r.json()["error_code"] == "EXECUTION_NOT_WAITING"


async def _slow_flow(api: Api, key: str) -> str:
    """One echo node held far longer than any test: the cancel is what ends it."""
    flow = {
        "flow_id": f"slow_{os.urandom(3).hex()}",
        "nodes": [{"id": "wait", "agent_id": "echo", "config": {"delay_ms": 600_000}}],
    }
    r = await api.http.post("/api/v1/flows", json=flow, headers=api.auth(key))
    assert r.status_code == 201, r.text
    return str(flow["flow_id"])


async def test_cancel_a_running_execution_then_409_on_terminal(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    h = api.auth(key)
    flow_id = await _slow_flow(api, key)
    eid = (await api.execute(key, flow_id, {"x": 1})).json()["execution_id"]
    await api.sse_until(key, eid, "execution.node_dispatched")  # echo is working on it

    idem = {**h, "Idempotency-Key": f"cancel-{eid}"}
    answers = await asyncio.gather(  # concurrent duplicates: one cancel, one answer
        *(
            api.http.post(
                f"/executions/{eid}/cancel", json={"reason": "changed my mind"}, headers=idem
            )
            for _ in range(3)
        )
    )
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    body = answers[0].json()
    assert body["status"] == "cancelled" and len({a.text for a in answers}) == 1
    # answered after the read model applied ExecutionCancelled: visible at once
    got = (await api.http.get(f"/api/v1/executions/{eid}", headers=h)).json()
    assert got["status"] == "cancelled" and got["error_message"] == "changed my mind"
    trail = (await api.http.get(f"/api/v1/executions/{eid}/events", headers=h)).json()
    assert [e["type"] for e in trail["events"]].count("execution.cancelled") == 1

    r = await api.http.post(f"/api/v1/executions/{eid}/cancel", headers=h)
    assert r.status_code == 409 and r.json()["error_code"] == "EXECUTION_TERMINAL", r.text
    again = await api.http.post(
        f"/api/v1/executions/{eid}/cancel", json={"reason": "changed my mind"}, headers=idem
    )
    assert again.status_code == 200 and again.text == answers[0].text  # the first answer again
    r = await api.http.post(f"/api/v1/executions/{eid}/cancel", headers=idem)  # another body
    assert r.status_code == 422 and r.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED", r.text
    # a cancelled execution whose agent delivered nothing costs nothing (docs/credits.md)
    for _ in range(100):
        me = (await api.http.get("/api/v1/users/me", headers=h)).json()
        if me["credits"] == 5:
            break
        await asyncio.sleep(0.1)
    assert me["credits"] == 5


async def test_cancel_of_an_execution_that_already_ended_is_409(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    h = api.auth(key)
    eid = (await api.execute(key, "echo_chain", {"x": 1})).json()["execution_id"]
    assert (await api.sse(key, eid))[-1]["event"] == "execution.completed"
    r = await api.http.post(f"/api/v1/executions/{eid}/cancel", headers=h)
    assert r.status_code == 409 and r.json()["error_code"] == "EXECUTION_TERMINAL"
    assert set(r.json()) >= {"detail", "code", "message", "error_code"}
    r = await api.http.post(f"/api/v1/executions/{eid}/input", json={"a": 1}, headers=h)
    assert r.status_code == 409 and r.json()["error_code"] == "EXECUTION_NOT_WAITING"


# --- agents ------------------------------------------------------------------------------


async def test_register_and_deregister_an_agent(api: Api) -> None:
    key = (await api.create_user(credits=1))["api_key"]
    h = api.auth(key)
    agent_id = f"ext-{os.urandom(3).hex()}"
    body = {
        "agent_id": agent_id,
        "name": "External scorer",
        "description": "an HTTP agent",
        "endpoint": "http://external-scorer.invalid:9/",
        "capabilities": ["scoring"],
        "agent_type": "processor",
    }
    r = await api.http.post("/api/v1/agents", json=body, headers=h)
    assert r.status_code == 201, r.text  # the catalogue shows it when the answer comes
    assert r.json()["agent_id"] == agent_id and r.json()["transport"] == "http"
    # no relay runs here: nothing has probed it, so it is not active, and says why
    assert (r.json()["active"], r.json()["status"]) == (False, "waiting"), r.text
    got = await api.http.get(f"/agents/{agent_id}", headers=h)
    assert got.status_code == 200 and got.json()["type"] == "processor"
    assert agent_id not in {
        a["agent_id"] for a in (await api.http.get("/agents/active", headers=h)).json()["agents"]
    }
    listed = (await api.http.get("/api/v1/agents", headers=h)).json()["agents"]
    assert agent_id in {a["agent_id"] for a in listed}

    r = await api.http.delete(f"/api/v1/agents/{agent_id}", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "deregistered", r.text
    assert (await api.http.get(f"/api/v1/agents/{agent_id}", headers=h)).status_code == 404
    listed = (await api.http.get("/agents", headers=h)).json()["agents"]
    assert agent_id not in {a["agent_id"] for a in listed}
    r = await api.http.delete(f"/api/v1/agents/{agent_id}", headers=h)
    assert r.status_code == 404 and r.json()["error_code"] == "AGENT_NOT_FOUND"

    # the original SDK's shape: {name, type, configuration}; the id comes from the name
    r = await api.http.post(
        "/agents",
        json={"name": "Data Processor", "type": "processor", "configuration": {"t": 0.7}},
        headers=h,
    )
    assert r.status_code == 201, r.text
    assert r.json()["agent_id"] == "data-processor"
    assert r.json()["configuration"] == {"t": 0.7}
    # a bus agent with no process behind it: waiting for a heartbeat that never comes
    assert (r.json()["active"], r.json()["status"]) == (False, "waiting"), r.text
    assert (await api.http.delete("/agents/data-processor", headers=h)).status_code == 200


# --- usage, status, metrics ----------------------------------------------------------------


async def test_usage_is_recorded_per_request_and_shown_in_me(api: Api) -> None:
    key = (await api.create_user(credits=3))["api_key"]
    h = api.auth(key)
    assert (await api.execute(key, "echo_chain", {})).status_code == 200
    assert (await api.http.get("/api/v1/flows/nope", headers=h)).status_code == 404
    for _ in range(3):
        assert (await api.http.get("/api/v1/flows", headers=h)).status_code == 200
    # the usage topic and the settle are projected asynchronously: both show within moments
    for _ in range(100):
        usage = (await api.http.get("/api/v1/users/me", headers=h)).json()["usage"]
        if usage["requests_total"] >= 5 and usage["credits_used_total"] >= 1:
            break
        await asyncio.sleep(0.1)
    assert usage["requests_total"] >= 5 and usage["requests_last_24h"] >= 5
    assert usage["errors_last_24h"] >= 1  # the 404
    assert usage["credits_used_total"] == 1 and usage["credits_used_last_24h"] == 1
    assert usage["last_request_at"]
    # the master key's calls are not a user's usage; an invalid key records nothing
    other = (await api.http.get("/api/v1/users/me", headers=api.auth(MASTER))).status_code
    assert other == 403


async def test_status_shows_components_heartbeats_and_consumer_lag(api: Api) -> None:
    async with asyncio.timeout(120):  # lag is measured in the background, beats every second
        while True:
            status = (await api.http.get("/status", headers=api.auth(MASTER))).json()
            groups = status["consumer_groups"]
            prefix = api.env["SPINE_TOPIC_PREFIX"]
            if {"metrics"} <= {s["service"] for s in status["services"]} and {
                f"{prefix}orchestrator",
                f"{prefix}auth",
                f"{prefix}agent.echo",
            } <= set(groups):
                break
            await asyncio.sleep(0.5)
    assert status["status"] == "healthy" and status["uptime"] > 0
    assert status["consumer_groups_age_s"] is not None
    assert {c: v["status"] for c, v in status["components"].items()} == {
        "kafka": "ok",
        "postgresql": "ok",
        "redis": "ok",
    }
    services = {s["service"] for s in status["services"] if s["alive"]}
    assert {"gateway", "auth", "orchestrator", "registry", "metrics"} <= services
    # what the stack runs is what the gateway expects (SPINE_EXPECTED_SERVICES), all there
    assert {"metrics", "agent:zoe", "agent:eddie", "agent:echo"} <= set(status["expected"])
    assert status["missing"] == []
    assert {a["agent_id"] for a in status["agents"] if a["active"]} == {"zoe", "eddie", "echo"}
    for group in groups.values():
        assert group["lag"] >= 0 and group["partitions"] >= 1
        assert all(t.startswith(f"{prefix}spine.") for t in group["topics"])


async def test_metrics_json_is_the_projected_summary(api: Api) -> None:
    key = (await api.create_user(credits=2))["api_key"]
    eid = (await api.execute(key, "echo_chain", {})).json()["execution_id"]
    assert (await api.sse(key, eid))[-1]["event"] == "execution.completed"
    master = api.auth(MASTER)  # every tenant's summary is the operator's
    async with asyncio.timeout(30):  # the metrics service publishes every 0.5 s
        while True:
            r = await api.http.get("/metrics", headers={**master, "Accept": "application/json"})
            m = r.json()
            if m["summary"].get("executions_completed", 0) >= 1:
                break
            await asyncio.sleep(0.2)
    assert m["executions_total"] >= 1 and m["summary"]["executions_total"] >= 1
    assert m["success_rate"] is not None and 0 <= m["success_rate"] <= 1
    assert m["flows_total"] >= 2 and m["agents_total"] >= 3
    assert m["summary_updated_at"] and m["timestamp"] and m["scope"] == "all"
    text = await api.http.get("/metrics", headers=master)
    assert text.headers["content-type"].startswith("text/plain")
    assert "spine_gateway_usage_records" in text.text


async def test_make_demo_runs_credit_analysis_to_a_decision(api: Api) -> None:
    """`make demo` (scripts/demo.py) against this stack: health, catalogue, a credit_analysis
    with two input turns followed on the stream, and the result."""
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv" / "bin" / "python"),
        str(ROOT / "scripts" / "demo.py"),
        env={**os.environ, "SPINE_URL": str(api.http.base_url).rstrip("/"), "API_KEY": MASTER},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(180):
        out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "asks (turn 2)" in text and "completed" in text, text
    assert "decision:" in text and "credits left:" in text, text
