"""echo-http: the original HTTP agent contract and its test knobs, over an ASGI transport."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from spine_agent.http import HttpExecuteResponse, HttpHealth
from spine_demo_agents.echo_http import EchoHttpSettings, create_app

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = EchoHttpSettings(ECHO_HTTP_PORT=8123, ECHO_HTTP_RATE_LIMIT=60)
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://echo") as c:
        yield c


def _body(config: dict[str, Any] | None = None, **input: Any) -> dict[str, Any]:  # noqa: A002
    return {
        "execution_id": "exec-1",
        "node_id": "n1",
        "input": {"user_message": "hello", "context": {"k": "v"}, "previous_messages": [], **input},
        "config": config or {},
    }


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    health = HttpHealth.model_validate(response.json())
    assert response.json() == {
        "agent_id": "echo-http",
        "version": "1.0.0",
        "capabilities": ["echo", "testing"],
        "ready": True,
        "endpoint": "http://127.0.0.1:8123",
        "rate_limit": 60,
    }
    assert health.ready


async def test_execute_echoes(client: httpx.AsyncClient) -> None:
    response = await client.post("/execute", json=_body({"x": 1}))
    assert response.status_code == 200
    body = HttpExecuteResponse.model_validate(response.json())
    assert body.status == "success"
    assert body.execution_id == "exec-1"
    assert body.error_message is None
    assert body.output.message == "echo: hello"
    assert body.output.data["input"]["context"] == {"k": "v"}
    assert body.output.data["config"] == {"x": 1}
    assert body.output.metadata["agent_id"] == "echo-http"
    assert set(response.json()) == {"status", "output", "error_message", "execution_id"}
    assert set(response.json()["output"]) == {"message", "data", "metadata"}


async def test_minimal_body_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/execute", json={"execution_id": "e", "node_id": "n"})
    assert response.status_code == 200
    assert response.json()["output"]["message"] == "echo"


async def test_fail_is_an_error_answer(client: httpx.AsyncClient) -> None:
    response = await client.post("/execute", json=_body({"fail": True}))
    assert response.status_code == 200
    assert response.json()["status"] == "error"
    assert "configured to fail" in response.json()["error_message"]


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_http_status_knob(client: httpx.AsyncClient, status: int) -> None:
    response = await client.post("/execute", json=_body({"http_status": status, "retry_after": 2}))
    assert response.status_code == status
    assert response.headers["retry-after"] == "2"
    assert "detail" in response.json()


async def test_http_status_times_fails_then_succeeds(client: httpx.AsyncClient) -> None:
    body = _body({"http_status": 503, "http_status_times": 2})
    body["execution_id"] = "exec-times"
    codes = [(await client.post("/execute", json=body)).status_code for _ in range(3)]
    assert codes == [503, 503, 200]


async def test_delay(client: httpx.AsyncClient) -> None:
    # only lower bounds: a busy machine makes every wait longer, never shorter
    started = time.monotonic()
    response = await client.post("/execute", json=_body({"delay_ms": 150}))
    assert time.monotonic() - started >= 0.15
    assert response.json()["output"]["metadata"]["duration_ms"] >= 150


async def test_hang_never_answers_in_time(client: httpx.AsyncClient) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.post("/execute", json=_body({"hang": True}))


async def test_bad_body_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/execute", json={"node_id": "n"})
    assert response.status_code == 422
