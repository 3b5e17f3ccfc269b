"""Paths of the app itself (no infrastructure: the lifespan is not run): /docs works
offline, and the operations paths exist under /api/v1 as every other path does."""

from __future__ import annotations

import re
from types import SimpleNamespace

import httpx
from spine_gateway.app import create_app
from spine_gateway.settings import GatewaySettings


async def test_swagger_ui_assets_are_served_by_the_gateway() -> None:
    app = create_app(GatewaySettings(API_KEY="x" * 20))  # no lifespan: nothing is started
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", page.text)
        assert len(assets) == 2, page.text
        for url in assets:
            assert url.startswith("/"), f"{url} is not served by the gateway"
            r = await client.get(url)
            assert r.status_code == 200 and len(r.content) > 10_000, url
        assert "cdn.jsdelivr" not in page.text and "unpkg" not in page.text
        redoc = await client.get("/redoc")
        assert redoc.status_code == 200 and "cdn.jsdelivr" not in redoc.text


async def test_operations_paths_exist_under_api_v1_too() -> None:
    app = create_app(GatewaySettings(API_KEY="x" * 20))
    app.state.gateway = SimpleNamespace(operations=_Operations())  # what the lifespan builds
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        root, prefixed = await client.get("/health"), await client.get("/api/v1/health")
        assert root.status_code == prefixed.status_code == 200
        assert root.json()["status"] == prefixed.json()["status"] == "healthy"
        for path in ("/status", "/api/v1/status"):
            assert (await client.get(path)).json() == {"status": "healthy"}, path
        for path in ("/metrics", "/api/v1/metrics"):
            assert (await client.get(path)).text == "# metrics\n", path
        assert (await client.get("/api/v1/nothing")).status_code == 404


class _Operations:
    async def status(self) -> tuple[dict[str, str], bool]:
        return {"status": "healthy"}, True

    async def prometheus(self) -> bytes:
        return b"# metrics\n"
