"""echo-http: the original HTTP agent contract and its test knobs, over an ASGI transport;
given the relay's public key, it serves only calls the relay's signer signed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from spine_agent.http import (
    KEY_ID_HEADER,
    TIMESTAMP_HEADER,
    HttpExecuteResponse,
    HttpHealth,
)
from spine_demo_agents.echo_http import EchoHttpSettings, create_app
from spine_registry.relay.keyfile import public_pem
from spine_registry.relay.signing import RelaySigner

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


# --- only the relay's calls, given its public key --------------------------------------
RELAY_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SIGNER = RelaySigner(RELAY_KEY)


@pytest_asyncio.fixture(loop_scope="session")
async def verifying(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    pub = tmp_path / "signing-key.pem.pub"
    pub.write_bytes(public_pem(RELAY_KEY))
    settings = EchoHttpSettings(ECHO_HTTP_RELAY_PUBLIC_KEY_FILE=str(pub))
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://echo") as c:
        yield c


def _signed(body: bytes, agent_id: str = "echo-http") -> dict[str, str]:
    return {"content-type": "application/json", **SIGNER.headers(agent_id, body)}


async def test_a_signed_call_is_served(verifying: httpx.AsyncClient) -> None:
    body = orjson.dumps(_body())
    response = await verifying.post("/execute", content=body, headers=_signed(body))
    assert response.status_code == 200
    assert response.json()["output"]["message"] == "echo: hello"


@pytest.mark.parametrize(
    ("forgery", "reason"),
    [
        ("unsigned", "missing header X-Spine-Signature"),
        ("body", "the signature does not verify"),
        ("other agent", "signed for agent 'zoe-http', not 'echo-http'"),
        ("other key", "the signature does not verify"),
        ("old", "X-Spine-Timestamp is 60"),  # 600s or 601s old: seconds are whole
    ],
)
async def test_unsigned_or_forged_calls_are_401(
    verifying: httpx.AsyncClient, forgery: str, reason: str
) -> None:
    body = orjson.dumps(_body())
    headers = _signed(body)
    if forgery == "unsigned":
        headers = {"content-type": "application/json"}
    elif forgery == "body":
        body = orjson.dumps(_body({"x": 1}))
    elif forgery == "other agent":
        headers = _signed(body, agent_id="zoe-http")
    elif forgery == "other key":
        other = RelaySigner(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
        headers = {**other.headers("echo-http", body), KEY_ID_HEADER: SIGNER.key_id}
    else:
        headers = RelaySigner(RELAY_KEY, clock=lambda: time.time() - 600).headers("echo-http", body)
    response = await verifying.post("/execute", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"].startswith(f"echo-http: {reason}")


async def test_a_forged_call_with_a_bad_body_is_401_not_422(verifying: httpx.AsyncClient) -> None:
    response = await verifying.post("/execute", content=b"{not json")
    assert response.status_code == 401
    body = b'{"node_id": "n"}'
    signed = await verifying.post("/execute", content=body, headers=_signed(body))
    assert signed.status_code == 422  # the relay's own bad body is still a validation error


async def test_health_answers_unsigned_probes_but_not_forged_ones(
    verifying: httpx.AsyncClient,
) -> None:
    assert (await verifying.get("/health")).status_code == 200  # container health checks
    assert (await verifying.get("/health", headers=_signed(b""))).status_code == 200
    forged = {**_signed(b""), TIMESTAMP_HEADER: "1"}
    refused = await verifying.get("/health", headers=forged)
    assert refused.status_code == 401
    assert "X-Spine-Timestamp is" in refused.json()["detail"]


async def test_the_relay_key_may_also_be_given_inline() -> None:
    pem = public_pem(RELAY_KEY).decode()
    assert EchoHttpSettings(ECHO_HTTP_RELAY_PUBLIC_KEY=pem).relay_key() is not None
    assert EchoHttpSettings(ECHO_HTTP_RELAY_PUBLIC_KEY=SIGNER.public_key_b64).relay_key()
    assert EchoHttpSettings().relay_key() is None
    with pytest.raises(ValueError, match="32 bytes"):
        EchoHttpSettings(ECHO_HTTP_RELAY_PUBLIC_KEY="c2hvcnQ=").relay_key()
