"""Tenants cannot touch each other (DESIGN §12, issue 16), over HTTP on a real stack:
scoped and expiring keys, admin keys, revocation on another replica within a second (its
open stream too), ownership of flows and agents, the credit floor, and the audit trail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import pytest_asyncio
from spine_servicekit.kafka import KafkaConfig

from .test_gateway_e2e import MASTER, Api, _free_port, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

#: how soon every replica must refuse a revoked key (the issue's bound)
REVOCATION_BOUND_S = 1.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(
        kafka,
        infra,
        topic_prefix,
        services=("registry", "orchestrator", "auth", "echo", "zoe", "eddie", "gateway"),
        env={"SPINE_MIN_CREDITS_PER_EXECUTION": "1", "SPINE_MIN_CREDITS_PER_AGENT_NODE": "1"},
    ) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def replica(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    """A second gateway replica with its own read model."""
    assert api.stack is not None
    port = _free_port()
    await api.stack.spawn(
        "gateway#2",
        {"PORT": str(port), "SPINE_GATEWAY_SCHEMA": api.env["SPINE_GATEWAY_SCHEMA"] + "2"},
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as other:
        async with asyncio.timeout(180):  # start-up has no event to await from here
            while True:
                try:
                    if (await other.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        yield other


def h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_key(api: Api, key: str, **body: Any) -> httpx.Response:
    return await api.http.post("/api/v1/keys", json=body, headers=h(key))


async def until_status(
    client: httpx.AsyncClient, path: str, key: str, status: int, within: float = 30
) -> float:
    """Seconds until ``path`` answers ``status`` for ``key`` (another replica's read model
    has no event this test can await)."""
    start = time.monotonic()
    async with asyncio.timeout(within):
        while (await client.get(path, headers=h(key))).status_code != status:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return time.monotonic() - start


async def audit_until(
    api: Api, key: str, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """The audit entries ``key`` sees, once ``done`` holds (the audit projection is paced
    like usage; the HTTP API offers nothing to await)."""
    async with asyncio.timeout(30):
        while True:
            r = await api.http.get("/api/v1/audit?limit=500", headers=h(key))
            entries: list[dict[str, Any]] = r.json()["entries"]
            if done(entries):
                return entries
            await asyncio.sleep(0.1)


# --- keys and scopes -------------------------------------------------------------------------


async def test_a_scoped_key_does_what_its_scopes_allow_and_mints_nothing_wider(api: Api) -> None:
    user = await api.create_user(credits=5)
    full = user["api_key"]
    r = await new_key(api, full, name="reader", scopes=["executions:read"])
    assert r.status_code == 201, r.text
    reader = r.json()
    assert reader["scopes"] == ["executions:read"] and reader["last4"] == reader["api_key"][-4:]

    assert (
        await api.http.get("/api/v1/executions", headers=h(reader["api_key"]))
    ).status_code == 200
    refused = await api.execute(reader["api_key"], "echo_chain", {})
    assert refused.status_code == 403 and refused.json()["error_code"] == "FORBIDDEN_SCOPE"
    wider = await new_key(api, reader["api_key"], scopes=["executions:run"])
    assert wider.status_code == 403 and wider.json()["error_code"] == "FORBIDDEN_SCOPE"
    admin = await new_key(api, full, role="admin", expires_in_s=60)
    assert admin.status_code == 403 and admin.json()["error_code"] == "ADMIN_REQUIRED"

    expiring = (await new_key(api, full, name="short", expires_in_s=600)).json()
    longer = await new_key(api, expiring["api_key"], expires_in_s=3600)
    assert longer.status_code == 403 and longer.json()["error_code"] == "FORBIDDEN_EXPIRY"
    inherited = await new_key(api, expiring["api_key"], scopes=["executions:read"])
    assert inherited.status_code == 201 and inherited.json()["expires_at"] == expiring["expires_at"]

    listed = (await api.http.get("/api/v1/keys", headers=h(full))).json()["keys"]
    assert {k["key_id"] for k in listed} >= {reader["key_id"], expiring["key_id"]}
    assert all("api_key" not in k and "key_hash" not in k for k in listed)
    assert sum(k["current"] for k in listed) == 1  # the primary key, which asked

    # a read-only key cannot revoke the full key; it may revoke itself
    lockout = await api.http.delete(
        f"/api/v1/keys/{listed[0]['key_id']}", headers=h(reader["api_key"])
    )
    assert lockout.status_code == 403, lockout.text
    gone = await api.http.delete(f"/api/v1/keys/{reader['key_id']}", headers=h(reader["api_key"]))
    assert gone.status_code == 200
    after = await api.http.get("/api/v1/executions", headers=h(reader["api_key"]))
    assert after.status_code == 401 and after.json()["error_code"] == "INVALID_API_KEY"


async def test_another_users_key_is_not_found_and_creation_is_rate_limited(api: Api) -> None:
    a, b = await api.create_user(), await api.create_user()
    a_key = (await new_key(api, a["api_key"], name="x")).json()
    r = await api.http.delete(f"/api/v1/keys/{a_key['key_id']}", headers=h(b["api_key"]))
    assert r.status_code == 404 and r.json()["error_code"] == "KEY_NOT_FOUND"
    codes = [(await new_key(api, b["api_key"], name=f"k{i}")).status_code for i in range(11)]
    assert codes[:10] == [201] * 10 and codes[10] == 429, codes


async def test_regenerate_rotates_only_the_key_that_called(api: Api) -> None:
    user = await api.create_user()
    second = (await new_key(api, user["api_key"], name="ci")).json()
    r = await api.http.post("/api/v1/users/regenerate-key", headers=h(second["api_key"]))
    assert r.status_code == 200 and r.json()["key_id"] == second["key_id"], r.text
    assert (await api.http.get("/api/v1/users/me", headers=h(second["api_key"]))).status_code == 401
    assert (
        await api.http.get("/api/v1/users/me", headers=h(r.json()["api_key"]))
    ).status_code == 200
    assert (await api.http.get("/api/v1/users/me", headers=h(user["api_key"]))).status_code == 200


# --- admin keys ------------------------------------------------------------------------------


async def test_admin_keys_administer_expire_within_12h_and_are_revoked_like_any(api: Api) -> None:
    too_long = await new_key(api, MASTER, role="admin", expires_in_s=13 * 3600)
    assert too_long.status_code == 422 and too_long.json()["error_code"] == "INVALID_EXPIRY"
    r = await new_key(api, MASTER, name="console", expires_in_s=3600)
    assert r.status_code == 201 and r.json()["role"] == "admin", r.text
    admin = r.json()
    tenant = await api.create_user(credits=3)
    run = await api.execute(tenant["api_key"], "credit_analysis", {"name": "Ana"})  # waits
    eid = run.json()["execution_id"]

    made = await api.http.post(
        "/api/v1/users/create", json={"email": f"{eid}@example.com"}, headers=h(admin["api_key"])
    )
    assert made.status_code == 201, made.text
    seen = await api.http.get(f"/api/v1/executions/{eid}", headers=h(admin["api_key"]))
    assert seen.status_code == 200 and seen.json()["execution_id"] == eid
    listed = await api.http.get("/api/v1/executions?limit=500", headers=h(admin["api_key"]))
    assert eid in {e["execution_id"] for e in listed.json()["executions"]}
    nope = await api.execute(admin["api_key"], "echo_chain", {})
    assert nope.status_code == 403 and nope.json()["error_code"] == "USER_KEY_REQUIRED"
    cancel = await api.http.post(
        f"/api/v1/executions/{eid}/cancel", json={"reason": "abuse"}, headers=h(admin["api_key"])
    )
    assert cancel.status_code == 200, cancel.text

    keys = (await api.http.get("/api/v1/keys", headers=h(MASTER))).json()["keys"]
    assert admin["key_id"] in {k["key_id"] for k in keys}
    assert (
        await api.http.delete(f"/api/v1/keys/{admin['key_id']}", headers=h(MASTER))
    ).status_code == 200
    again = await api.http.get(f"/api/v1/users/{tenant['user_id']}", headers=h(admin["api_key"]))
    assert again.status_code == 401

    wanted = {("auth.user_created", made.json()["user_id"]), ("execution.cancelled", eid)}

    def by_admin(entries: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {(e["action"], e["subject"]) for e in entries if e["actor"] == admin["key_id"]}

    audit = await audit_until(api, MASTER, lambda entries: wanted <= by_admin(entries))
    assert wanted <= by_admin(audit)


# --- revocation on every replica, streams included --------------------------------------------


async def test_a_key_revoked_on_one_replica_is_refused_by_another_within_a_second(
    api: Api, replica: httpx.AsyncClient
) -> None:
    user = await api.create_user(credits=3)
    key = (await new_key(api, user["api_key"], name="stream")).json()
    await until_status(replica, "/api/v1/users/me", key["api_key"], 200)
    run = await api.execute(key["api_key"], "credit_analysis", {"name": "Ana"})  # waits for input
    eid = run.json()["execution_id"]
    await until_status(replica, f"/api/v1/executions/{eid}", key["api_key"], 200)

    events: list[dict[str, Any]] = []
    opened = asyncio.Event()

    async def follow() -> float:
        other = Api(str(replica.base_url))
        try:
            async with aclosing(other.sse_events(key["api_key"], eid)) as sse:
                async for event in sse:
                    events.append(event)
                    opened.set()
            return time.monotonic()
        finally:
            await other.http.aclose()

    stream = asyncio.create_task(follow())
    async with asyncio.timeout(30):
        await opened.wait()  # the stream has sent the stored trail: it is open
    revoked_at = time.monotonic()
    r = await api.http.delete(f"/api/v1/keys/{key['key_id']}", headers=h(user["api_key"]))
    assert r.status_code == 200, r.text
    refused_after = await until_status(replica, "/api/v1/users/me", key["api_key"], 401)
    ended_at = await asyncio.wait_for(stream, 10)
    assert refused_after <= REVOCATION_BOUND_S, f"refused after {refused_after:.3f} s"
    assert ended_at - revoked_at <= REVOCATION_BOUND_S + 0.5, (
        f"closed after {ended_at - revoked_at:.3f} s"
    )
    assert events[-1]["event"] == "error" and events[-1]["data"]["code"] == "KEY_REVOKED"
    assert (await replica.get("/api/v1/users/me", headers=h(user["api_key"]))).status_code == 200


# --- ownership of flows and agents -------------------------------------------------------------


def one_node_flow(flow_id: str, agent_id: str = "echo", cost: int | None = None) -> dict[str, Any]:
    flow: dict[str, Any] = {"flow_id": flow_id, "nodes": [{"id": "a", "agent_id": agent_id}]}
    if cost is not None:
        flow["cost"] = cost
    return flow


async def test_users_cannot_change_system_flows_nor_see_each_others(api: Api) -> None:
    a, b = await api.create_user(credits=5), await api.create_user(credits=5)
    system = (await api.http.get("/api/v1/flows/echo_chain", headers=h(a["api_key"]))).json()
    assert system["owner"] == "system"
    hijack = await api.http.put(
        "/api/v1/flows/echo_chain", json=one_node_flow("echo_chain"), headers=h(a["api_key"])
    )
    assert hijack.status_code == 403 and hijack.json()["error_code"] == "NOT_OWNER", hijack.text
    post = await api.http.post(
        "/api/v1/flows", json=one_node_flow("echo_chain"), headers=h(a["api_key"])
    )
    assert post.status_code == 409 and post.json()["error_code"] == "FLOW_EXISTS", post.text

    mine = f"a_flow_{a['user_id']}"
    created = await api.http.post(
        "/api/v1/flows", json=one_node_flow(mine), headers=h(a["api_key"])
    )
    assert created.status_code == 201 and created.json()["owner"] == a["user_id"], created.text
    assert (await api.http.get(f"/api/v1/flows/{mine}", headers=h(b["api_key"]))).status_code == 404
    assert mine not in {
        f["flow_id"]
        for f in (await api.http.get("/api/v1/flows", headers=h(b["api_key"]))).json()["flows"]
    }
    taken = await api.http.put(
        f"/api/v1/flows/{mine}", json=one_node_flow(mine), headers=h(b["api_key"])
    )
    assert taken.status_code == 409 and taken.json()["error_code"] == "FLOW_ID_TAKEN", taken.text
    assert (await api.execute(b["api_key"], mine, {})).status_code == 404
    assert (
        await api.http.delete(f"/api/v1/flows/{mine}", headers=h(b["api_key"]))
    ).status_code == 404
    run = await api.execute(a["api_key"], mine, {"x": 1})
    assert run.status_code == 200, run.text
    assert (await api.sse(a["api_key"], run.json()["execution_id"]))[-1][
        "event"
    ] == "execution.completed"
    assert (await api.http.get(f"/api/v1/flows/{mine}", headers=h(MASTER))).status_code == 200


async def test_agent_ids_stay_with_their_owner_even_after_deregistration(api: Api) -> None:
    a, b = await api.create_user(), await api.create_user()
    agent_id = f"agent-{a['user_id'][-8:]}"
    body = {"agent_id": agent_id, "name": "A's agent", "capabilities": ["x"]}
    r = await api.http.post("/api/v1/agents", json=body, headers=h(a["api_key"]))
    assert r.status_code == 201 and r.json()["owner"] == a["user_id"], r.text
    assert (
        await api.http.get(f"/api/v1/agents/{agent_id}", headers=h(b["api_key"]))
    ).status_code == 404
    stolen = await api.http.post("/api/v1/agents", json=body, headers=h(b["api_key"]))
    assert stolen.status_code == 409 and stolen.json()["error_code"] == "AGENT_ID_TAKEN"
    assert (
        await api.http.delete(f"/api/v1/agents/{agent_id}", headers=h(b["api_key"]))
    ).status_code == 404
    echo = await api.http.post(
        "/api/v1/agents", json={"agent_id": "echo", "name": "mine now"}, headers=h(b["api_key"])
    )
    assert echo.status_code == 403 and echo.json()["error_code"] == "NOT_OWNER"
    gone = await api.http.delete(f"/api/v1/agents/{agent_id}", headers=h(a["api_key"]))
    assert gone.status_code == 200 and gone.json()["status"] == "deregistered", gone.text
    again = await api.http.post("/api/v1/agents", json=body, headers=h(b["api_key"]))
    assert again.status_code == 409 and again.json()["error_code"] == "AGENT_ID_TAKEN"
    # a user's flow cannot use another user's agent
    a_again = await api.http.post("/api/v1/agents", json=body, headers=h(a["api_key"]))
    assert a_again.status_code == 201, a_again.text
    flow = one_node_flow(f"b_uses_{agent_id}", agent_id)
    refused = await api.http.post("/api/v1/flows", json=flow, headers=h(b["api_key"]))
    assert refused.status_code == 422 and refused.json()["error_code"] == "AGENT_NOT_USABLE"


# --- credits -----------------------------------------------------------------------------------


async def test_a_users_own_flow_cannot_be_priced_below_the_floor(api: Api) -> None:
    poor = await api.create_user(credits=0)
    free = f"free_{poor['user_id']}"
    r = await api.http.post(
        "/api/v1/flows", json=one_node_flow(free, cost=0), headers=h(poor["api_key"])
    )
    assert r.status_code == 201, r.text
    refused = await api.execute(poor["api_key"], free, {})
    assert refused.status_code == 402, refused.text
    rich = await api.create_user(credits=5)
    paid = f"paid_{rich['user_id']}"
    await api.http.post(
        "/api/v1/flows", json=one_node_flow(paid, cost=0), headers=h(rich["api_key"])
    )
    run = await api.execute(rich["api_key"], paid, {})
    assert run.status_code == 200, run.text
    await api.sse(rich["api_key"], run.json()["execution_id"])
    me = await api.http.get("/api/v1/users/me", headers=h(rich["api_key"]))
    assert me.json()["credits"] == 5 - 2  # 1 per execution + 1 per agent node


# --- audit -------------------------------------------------------------------------------------


async def test_the_audit_names_the_actor_and_shows_users_only_their_own(api: Api) -> None:
    a, b = await api.create_user(), await api.create_user()
    k = (await new_key(api, a["api_key"], name="ci", scopes=["flows:write"])).json()
    flow_id = f"audited_{a['user_id']}"
    r = await api.http.post("/api/v1/flows", json=one_node_flow(flow_id), headers=h(k["api_key"]))
    assert r.status_code == 201, r.text

    async def entries(key: str) -> list[dict[str, Any]]:
        return list(
            (await api.http.get("/api/v1/audit?limit=500", headers=h(key))).json()["entries"]
        )

    def key_created(e: dict[str, Any]) -> bool:
        return e["action"] == "auth.key_created" and e["detail"]["key_id"] == k["key_id"]

    mine = await audit_until(  # both topics' entries: the projector takes them in turn
        api,
        a["api_key"],
        lambda got: (
            any(e["subject"] == f"flow:{flow_id}" for e in got) and any(key_created(e) for e in got)
        ),
    )
    assert {e["tenant"] for e in mine} == {a["user_id"]}
    created = [e for e in mine if e["subject"] == f"flow:{flow_id}"]
    assert created[0]["actor"] == k["key_id"] and created[0]["action"] == "flow.created"
    assert all(e["tenant"] == b["user_id"] for e in await entries(b["api_key"]))
    page = (await api.http.get("/api/v1/audit?limit=1", headers=h(MASTER))).json()
    assert len(page["entries"]) == 1 and page["next_cursor"]
    nxt = await api.http.get(
        f"/api/v1/audit?limit=1&cursor={page['next_cursor']}", headers=h(MASTER)
    )
    assert nxt.status_code == 200 and nxt.json()["entries"][0] != page["entries"][0]
