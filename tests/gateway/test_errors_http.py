"""The one error shape, served by the app's exception handlers (no infrastructure)."""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Body as FastAPIBody
from fastapi import FastAPI
from pydantic import BaseModel
from spine_gateway.app import _install_errors
from spine_gateway.errors import InsufficientCredits
from spine_gateway.models import ExecuteRequest, InputRequest

FIELDS = {"detail", "code", "message", "error_code"}
#: a body FastAPI cannot even decode (answered 400 by FastAPI itself)
_NOT_UTF8 = {"content": b"\xff\xfeBj\x9d}", "headers": {"content-type": "application/json"}}


class Body(BaseModel):
    flow_id: str


def _app() -> FastAPI:
    app = FastAPI()
    _install_errors(app)

    @app.post("/x")
    async def x(body: Body) -> dict[str, str]:
        raise InsufficientCredits("no credits", headers={"X-Test": "1"})

    @app.post("/optional")
    async def optional(body: Annotated[Body | None, FastAPIBody()] = None) -> dict[str, str]:
        return {"ok": "yes"}

    @app.post("/execute")
    async def execute(body: ExecuteRequest) -> dict[str, str]:
        return {"ok": body.flow_id}

    @app.post("/input")
    async def provide(body: InputRequest) -> dict[str, str]:
        return {"ok": "yes"}

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
    for kw in ({"json": {}}, {"content": b"{nope"}, {"json": {"flow_id": 3}}, _NOT_UTF8):
        r = await _call("POST", "/x", **kw)
        assert r.status_code == 422, r.text
        assert r.json()["error_code"] == "VALIDATION_ERROR" and set(r.json()) >= FIELDS


async def test_a_body_fastapi_cannot_decode_is_422_too() -> None:
    r = await _call("POST", "/optional", **_NOT_UTF8)  # type: ignore[arg-type]
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


BAD_INPUT = {
    b'{"a": {"b": 123456789012345678901234567890}}': "a.b: integer beyond 64 bits",
    b'{"t": "\\ud800"}': "t: text is not valid Unicode",
    b'{"\\ud800": 1}': "(key): text is not valid Unicode",
    b'{"n": NaN}': "n: number not finite",
    b'{"n": [1, 1e400]}': "n[1]: number not finite",
    b'{"n": -Infinity}': "n: number not finite",
}


async def test_input_the_bus_cannot_carry_is_422_naming_the_field() -> None:
    for data, said in BAD_INPUT.items():
        for path, body in (
            ("/execute", b'{"flow_id": "f", "input_data": ' + data + b"}"),
            ("/input", b'{"input": ' + data + b"}"),
            ("/input", data),  # the answer's fields sent directly
        ):
            if path == "/input" and body == data and said.startswith("(key)"):
                said = "valid string"  # pydantic refuses such an extra field's name itself
            r = await _call(
                "POST", path, content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code == 422, (path, body, r.text)
            assert r.json()["error_code"] == "VALIDATION_ERROR" and said in r.json()["message"]
    big = b'{"flow_id": "f", "input_data": {"u": 18446744073709551615, "i": -9223372036854775808}}'
    r = await _call("POST", "/execute", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text  # 64 bits, signed or not, travel
