"""The relay's health probe (over ``httpx.MockTransport``) and which agents it serves."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from spine_contracts import AgentDeregistered, AgentInfo, AgentRegistered, AgentStatusChanged
from spine_registry.relay.catalog import RelayCatalog
from spine_registry.relay.probe import probe

ENDPOINT = "http://agent.test:8080/"


async def probe_with(handler: Any, within: float = 1.0) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await probe(client, ENDPOINT, within)


async def test_ready_agent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"agent_id": "a", "version": "2.0.0", "capabilities": ["x", 3], "ready": True}
        return httpx.Response(200, json=body)

    result = await probe_with(handler)
    assert result.ready and result.reason == "ok"
    assert result.capabilities == ("x",) and result.version == "2.0.0"
    assert [(r.method, str(r.url)) for r in seen] == [("GET", "http://agent.test:8080/health")]


async def test_a_lenient_body_without_ready_counts_as_ready() -> None:
    result = await probe_with(lambda _r: httpx.Response(200, json={"status": "healthy"}))
    assert result.ready and result.capabilities is None and result.version is None


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(200, json={"ready": False}), "says ready: false"),
        (httpx.Response(503, text="warming up"), "HTTP 503 from http://agent.test:8080/health"),
        (httpx.Response(200, text="OK"), "body is not JSON"),
        (httpx.Response(200, json=["ready"]), "not a JSON object"),
    ],
)
async def test_not_ready(response: httpx.Response, reason: str) -> None:
    result = await probe_with(lambda _r: response)
    assert not result.ready
    assert reason in result.reason


async def test_refused_connection_is_not_ready() -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("All connection attempts failed") from ConnectionRefusedError()

    result = await probe_with(handler)
    assert not result.ready
    assert result.reason == "connection refused: GET http://agent.test:8080/health"


async def test_a_slow_health_check_is_not_ready() -> None:
    async def handler(_request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        raise AssertionError("unreachable")

    result = await probe_with(handler, within=0.1)
    assert not result.ready and result.reason.startswith("timed out after 0.1s")


# --- which agents the relay serves -----------------------------------------------------
def http_agent(agent_id: str = "h", endpoint: str | None = "http://h:1", **kw: Any) -> AgentInfo:
    return AgentInfo(agent_id=agent_id, transport="http", endpoint=endpoint, **kw)


def entry(cls: Any, info: AgentInfo, registered: bool = True, active: bool = False) -> Any:
    return cls.build(agent=info, registered=registered, active=active)


def test_catalog_serves_registered_http_agents_only() -> None:
    catalog = RelayCatalog()
    assert catalog.apply(entry(AgentRegistered, http_agent()))
    assert not catalog.apply(entry(AgentRegistered, AgentInfo(agent_id="k")))  # kafka
    assert not catalog.apply(entry(AgentRegistered, http_agent("n", endpoint=None)))
    assert set(catalog.agents) == {"h"}


def test_catalog_ignores_liveness_but_follows_info_and_deregistration() -> None:
    catalog = RelayCatalog()
    info = http_agent()
    catalog.apply(entry(AgentRegistered, info))
    assert not catalog.apply(entry(AgentStatusChanged, info, active=True))
    assert not catalog.apply(entry(AgentStatusChanged, info, active=False))
    moved = http_agent(endpoint="http://h:2")
    assert catalog.apply(entry(AgentRegistered, moved))
    assert catalog.agents["h"].endpoint == "http://h:2"
    assert catalog.apply(entry(AgentDeregistered, moved, registered=False))
    assert catalog.agents == {}
    assert not catalog.apply(entry(AgentDeregistered, moved, registered=False))
    # re-registered as a Kafka-native agent: no longer the relay's
    catalog.apply(entry(AgentRegistered, info))
    assert catalog.apply(entry(AgentRegistered, AgentInfo(agent_id="h", transport="kafka")))
    assert catalog.agents == {}


async def test_a_bad_endpoint_is_not_ready() -> None:
    async with httpx.AsyncClient() as client:
        result = await probe(client, "agent.test:8080", 1.0)
    assert not result.ready and result.reason.startswith("invalid agent endpoint 'agent.test")
