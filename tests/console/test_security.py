"""Headers and the CSRF comparison, checked on a bare ASGI app (no I/O)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from spine_console.security import CSP, SecurityHeaders, csrf_ok


def _client() -> httpx.AsyncClient:
    app = FastAPI()
    app.add_middleware(SecurityHeaders)

    @app.get("/page")
    def page() -> PlainTextResponse:
        return PlainTextResponse("x")

    @app.get("/static/v/app.css")
    def css() -> PlainTextResponse:
        return PlainTextResponse("x")

    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://console")


def test_policy_forbids_inline_code_eval_and_framing() -> None:
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert "frame-ancestors 'none'" in CSP
    assert "script-src 'self'" in CSP and "style-src 'self'" in CSP


async def test_every_answer_carries_the_headers_and_pages_are_not_cached() -> None:
    async with _client() as client:
        page = await client.get("/page")
        static = await client.get("/static/v/app.css")
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert static.headers["content-security-policy"] == CSP
    assert "cache-control" not in static.headers


def test_csrf_needs_the_exact_token() -> None:
    assert csrf_ok("abc", "abc")
    assert not csrf_ok("abc", "abd")
    assert not csrf_ok("abc", None)
    assert not csrf_ok("abc", "")
    assert not csrf_ok("", "")
