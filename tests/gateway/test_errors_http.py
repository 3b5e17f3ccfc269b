"""The one error shape, served by the app's exception handlers (no infrastructure)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from pydantic import BaseModel
from spine_gateway.app import _install_errors
from spine_gateway.errors import InsufficientCredits

FIELDS = {"detail", "code", "message", "error_code"}


class Body(BaseModel):
    flow_id: str


def _app() -> FastAPI:
    app = FastAPI()
    _install_errors(app)

    @app.post("/x")
    async def x(body: Body) -> dict[str, str]:
        raise InsufficientCredits("no credits", headers={"X-Test": "1"})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail")

    return app


async def _call(method: str, path: str, **kw: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, path, **kw)  # type: ignore[arg-type]


async def test_typed_error_keeps_status_code_and_headers() -> None:
    r = await _call("POST", "/x", json={"flow_id": "f"})
    assert r.status_code == 402 and r.headers["X-Test"] == "1"
    assert r.json()["error_code"] == "INSUFFICIENT_CREDITS" and set(r.json()) >= FIELDS


async def test_bad_body_is_422_in_the_same_shape() -> None:
    for kw in ({"json": {}}, {"content": b"{nope"}, {"json": {"flow_id": 3}}):
        r = await _call("POST", "/x", **kw)
        assert r.status_code == 422, r.text
        assert r.json()["error_code"] == "VALIDATION_ERROR" and set(r.json()) >= FIELDS


async def test_unknown_route_and_method() -> None:
    r = await _call("GET", "/nowhere")
    assert r.status_code == 404 and r.json()["error_code"] == "NOT_FOUND"
    r = await _call("GET", "/x")
    assert r.status_code == 405 and r.json()["error_code"] == "METHOD_NOT_ALLOWED"


async def test_unexpected_error_hides_its_detail() -> None:
    r = await _call("GET", "/boom")
    assert r.status_code == 500
    assert r.json()["message"] == "internal error" and "secret" not in r.text
