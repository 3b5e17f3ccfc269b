"""Size limits without infrastructure: the body limit middleware (declared and streamed
bodies) on a small app and on the gateway's own app, and the message-size check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel
from spine_contracts import ProvideInput, topics
from spine_gateway.adapters.kafka import Publisher
from spine_gateway.app import _install_errors, create_app
from spine_gateway.errors import PayloadTooLarge, replayed
from spine_gateway.limits import (
    MESSAGE_HEADROOM_BYTES,
    BodySizeLimit,
    execution_allowance,
    message_budget,
)
from spine_gateway.settings import GatewaySettings
from spine_kafka.limits import RECORD_OVERHEAD_BYTES
from spine_kafka.security import KafkaSecurity
from spine_servicekit.kafka import KafkaConfig

FIELDS = {"detail", "code", "message", "error_code"}
LIMIT = 4096


class Body(BaseModel):
    data: dict[str, Any]


def _app(calls: list[str]) -> FastAPI:
    app = FastAPI()
    _install_errors(app)

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        body = await request.body()
        calls.append("raw")  # the body was read whole
        return {"n": len(body)}

    @app.post("/model")
    async def model(body: Body) -> dict[str, int]:
        calls.append("model")
        return {"n": len(body.data)}

    @app.get("/get")
    async def get() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(BodySizeLimit, max_bytes=LIMIT)
    return app


async def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


class Chunks:
    """A streamed body without Content-Length; counts what the server pulled."""

    def __init__(self, chunk: int, count: int | None) -> None:
        self.chunk, self.count, self.sent = chunk, count, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        n = 0
        while self.count is None or n < self.count:  # None: never ends
            n += 1
            self.sent += self.chunk
            yield b" " * self.chunk


def _is_413(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    assert set(r.json()) >= FIELDS and r.json()["error_code"] == "PAYLOAD_TOO_LARGE"
    assert str(LIMIT) in r.json()["message"]


async def test_declared_length_over_the_limit_never_reaches_the_app() -> None:
    calls: list[str] = []
    async with await _client(_app(calls)) as c:
        for path in ("/raw", "/model"):
            _is_413(await c.post(path, content=b"x" * (LIMIT + 1)))
        assert calls == []
        r = await c.post("/raw", content=b"x" * LIMIT)  # exactly the limit is fine
        assert r.status_code == 200 and r.json() == {"n": LIMIT}
        r = await c.post("/model", json={"data": {"a": 1}})
        assert r.status_code == 200 and r.json() == {"n": 1}
        assert (await c.get("/get")).status_code == 200


async def test_streamed_body_is_cut_off_at_the_limit() -> None:
    calls: list[str] = []
    async with await _client(_app(calls)) as c:
        for path in ("/raw", "/model"):
            endless = Chunks(1000, None)  # would never end if it were buffered
            async with asyncio.timeout(10):
                r = await c.post(path, content=endless)
            _is_413(r)
            assert "content-length" not in {k.lower() for k in r.request.headers}
            assert endless.sent <= LIMIT + 1000  # read no further than the chunk over it
        assert calls == []  # neither handler got a body
        small = Chunks(1000, 4)
        r = await c.post("/raw", content=small)
        assert r.status_code == 200 and r.json() == {"n": 4000}


async def test_gateway_app_refuses_large_bodies_before_authentication() -> None:
    settings = GatewaySettings(API_KEY="x" * 20, SPINE_GATEWAY_MAX_BODY_BYTES=LIMIT)
    app = create_app(settings, replica_id="test")  # no lifespan: nothing behind the routes
    big = {"flow_id": "f", "input_data": {"x": "y" * LIMIT}}
    async with await _client(app) as c:
        for path in ("/api/v1/flows/execute", "/flows/execute", "/api/v1/users/create"):
            _is_413(await c.post(path, json=big))
        # a streamed body: routes with a declared body read it before authenticating
        _is_413(await c.post("/api/v1/flows/execute", content=Chunks(1024, None)))
        _is_413(await c.post("/api/v1/executions/e1/input", content=Chunks(1024, None)))
        _is_413(await c.put("/api/v1/flows/f", content=b"x" * (LIMIT + 1)))
        schema = (await c.get("/openapi.json")).json()
    responses = schema["paths"]["/api/v1/flows/execute"]["post"]["responses"]
    assert "413" in responses


def test_body_limit_setting_defaults_to_one_mib() -> None:
    assert GatewaySettings(API_KEY="x" * 20).max_body_bytes == 1_048_576


def test_message_budget_leaves_headroom() -> None:
    assert message_budget(1_046_528) == 1_046_528 - MESSAGE_HEADROOM_BYTES == 980_992
    assert message_budget(100_000) == 50_000  # never less than half the limit
    # an execution's start: room for its nodes' state in the orchestrator's snapshot
    assert message_budget(1_046_528, execution_allowance(["a", "bb"])) == 980_992 - 1024 - 12


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_and_wait(self, topic: str, value: bytes, **_kw: Any) -> Any:
        self.sent.append(value)
        raise AssertionError("only oversized messages are sent in this test")


async def test_oversized_message_is_refused_before_it_is_sent() -> None:
    cfg = KafkaConfig(
        bootstrap_servers="unused:9092", max_message_bytes=200_000, security=KafkaSecurity()
    )
    producer = RecordingProducer()
    publisher = Publisher(cfg, producer)  # type: ignore[arg-type]
    cmd = ProvideInput.build(execution_id="e1", input={"text": "x" * 150_000})
    with pytest.raises(PayloadTooLarge) as raised:
        await publisher.publish(topics.EXECUTION_COMMANDS, "e1", cmd, what="input")
    assert producer.sent == []
    err = raised.value
    assert err.status == 413 and err.code == "PAYLOAD_TOO_LARGE"
    assert err.message.startswith("input too large")
    assert err.extra["limit"] == 200_000 - RECORD_OVERHEAD_BYTES - MESSAGE_HEADROOM_BYTES
    assert "the 197,952-byte message limit less 65,536" in err.message


def test_a_stored_413_replays_as_413() -> None:
    again = replayed(413, "PAYLOAD_TOO_LARGE", "input too large", {})
    assert isinstance(again, PayloadTooLarge) and again.status == 413
