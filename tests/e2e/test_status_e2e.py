"""``/status`` answers what the deployment runs (issue 18, "Failures that hide"): real
processes on the real bus, a gateway told what to expect (``SPINE_EXPECTED_SERVICES``).

* everything expected runs: 200 ``healthy``; the master key's view lists the live instances
  only — a beat older than the stale window and a ``stopping`` one are not listed — and no
  expected entry is missing; a tenant's agent that never beats changes nothing;
* an expected service is ``kill -9``-ed: once its beats are stale, 503 ``degraded`` for every
  caller (no key too), the master key's view names it missing and lists no instance of it;
* the original's published SDK (``ai-spine-sdk``) retries that 503, then raises;
* an expected system agent is ``kill -9``-ed: once the registry has marked it inactive (its
  heartbeat TTL), it is named missing too.

Beats every second here (``SPINE_HEARTBEAT_INTERVAL=1``: stale after 3 s), the registry's
agent TTL 3 s. Waits poll ``/status`` (an HTTP answer has no event to await).
"""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from ai_spine import AISpine, AISpineError
from spine_contracts import AgentInfo, RegisterAgent, ServiceHeartbeat, topics
from spine_servicekit.kafka import KafkaConfig

from .test_gateway_e2e import MASTER, Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

EXPECTED = "gateway,orchestrator,registry,agent:echo"
LIVENESS = {"status", "version", "uptime"}
TENANT_AGENT = "tenant-bot"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(
        kafka,
        infra,
        topic_prefix,
        services=("registry", "orchestrator", "echo", "gateway"),
        agents=("echo",),
        flows=(),
        env={"SPINE_EXPECTED_SERVICES": EXPECTED, "SPINE_REGISTRY_HEARTBEAT_TTL": "3"},
    ) as client:
        yield client


async def _status(api: Api, key: str | None = MASTER) -> httpx.Response:
    return await api.http.get("/status", headers=api.auth(key) if key else {})


async def _until_status(api: Api, done: Any, within: float = 60) -> dict[str, Any]:
    """The master key's ``/status`` body once ``done(code, body)`` holds."""
    async with asyncio.timeout(within):
        while True:
            r = await _status(api)
            body = r.json()
            if done(r.status_code, body):
                return dict(body)
            await asyncio.sleep(0.2)


def _beat(service: str, instance_id: str, status: str = "ok", age_s: float = 0) -> ServiceHeartbeat:
    beat = ServiceHeartbeat.build(
        service=service,
        instance_id=instance_id,
        started_at=datetime.now(UTC) - timedelta(hours=2),
        status=status,
    )
    return beat.model_copy(update={"occurred_at": datetime.now(UTC) - timedelta(seconds=age_s)})


async def _requests_503(api: Api) -> float:
    """This gateway's count of ``/status`` answered 503 (its Prometheus text)."""
    text = (await api.http.get("/metrics", headers=api.auth(MASTER))).text
    found = re.search(
        r'^spine_gateway_requests_total\{method="GET",route="/status",status="503"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    return float(found.group(1)) if found else 0.0


async def test_healthy_when_everything_expected_runs(api: Api) -> None:
    assert api.stack is not None
    # what a dead past left on the topic: a beat an hour old, a goodbye, both never listed
    await api.stack.publish(
        topics.SERVICE_HEARTBEATS,
        "orchestrator-old",
        _beat("orchestrator", "orchestrator-old", age_s=3600),
    )
    await api.stack.publish(
        topics.SERVICE_HEARTBEATS, "registry-gone", _beat("registry", "registry-gone", "stopping")
    )
    # a tenant's agent (registered by the gateway's road, owner a user) that never beats:
    # down, and not expected
    register = RegisterAgent.build(agent=AgentInfo(agent_id=TENANT_AGENT), owner="user-t")
    await api.stack.publish(topics.REGISTRY_REQUESTS, TENANT_AGENT, register)
    path = f"/api/v1/agents/{TENANT_AGENT}"
    async with asyncio.timeout(60):  # active when registered; inactive after the TTL
        while True:
            r = await api.http.get(path, headers=api.auth(MASTER))
            if r.status_code == 200 and r.json()["active"] is False:
                break
            await asyncio.sleep(0.2)
    assert r.json()["owner"] == "user-t"

    body = await _until_status(
        api, lambda code, b: code == 200 and {"orchestrator-test", "registry-test"} <= _instances(b)
    )
    assert body["status"] == "healthy"
    assert body["expected"] == ["gateway", "orchestrator", "registry", "agent:echo"]
    assert body["missing"] == []
    assert _instances(body) == {"gateway-test", "orchestrator-test", "registry-test"}
    assert all(s["alive"] and s["age_s"] <= 3 for s in body["services"])
    assert [(a["agent_id"], a["active"]) for a in body["agents"]] == [("echo", True)]
    r = await _status(api, None)
    assert r.status_code == 200 and r.json()["status"] == "healthy"
    assert set(r.json()) == LIVENESS


def _instances(body: dict[str, Any]) -> set[str]:
    return {s["instance_id"] for s in body["services"]}


async def test_an_expected_service_that_stops_beating_is_missing(api: Api) -> None:
    assert api.stack is not None
    api.stack.kill("orchestrator")
    await api.stack.wait_exit("orchestrator")
    body = await _until_status(api, lambda code, _b: code == 503)
    assert body["status"] == "degraded"
    assert body["missing"] == ["orchestrator"]
    assert "orchestrator" not in {s["service"] for s in body["services"]}
    assert {c["status"] for c in body["components"].values()} == {"ok"}  # only what is missing
    # every caller sees degraded, the liveness view without a key too (and no names)
    r = await _status(api, None)
    assert r.status_code == 503 and r.json()["status"] == "degraded"
    assert set(r.json()) == LIVENESS


async def test_the_published_sdk_retries_a_503_then_raises(api: Api) -> None:
    """ai-spine-sdk 2.3.1 retries 429/5xx (urllib3 ``Retry``, 3 retries, backoff 0, 2, 4 s)
    and then raises its ``NetworkError`` ("too many 503 error responses")."""
    before = await _requests_503(api)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "API key should start with 'sk_'": the master key
        client = AISpine(api_key=MASTER, base_url=str(api.http.base_url), timeout=30)
    with pytest.raises(AISpineError, match="503"):
        await asyncio.to_thread(client.get_status)
    assert await _requests_503(api) - before == 4  # the first request and three retries


async def test_an_expected_agent_that_stops_is_missing(api: Api) -> None:
    assert api.stack is not None
    api.stack.kill("echo")
    await api.stack.wait_exit("echo")
    body = await _until_status(api, lambda _c, b: "agent:echo" in b.get("missing", []))
    assert body["status"] == "degraded"
    assert body["missing"] == ["orchestrator", "agent:echo"]
    assert [(a["agent_id"], a["active"]) for a in body["agents"]] == [("echo", False)]
