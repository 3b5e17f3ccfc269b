"""Paths of the app itself (no infrastructure: the lifespan is not run): /docs works
offline, the operations paths exist under /api/v1 as every other path does, and the
metrics scrape token opens the Prometheus text only."""

from __future__ import annotations

import re
from types import SimpleNamespace

import httpx
import pytest
from pydantic import ValidationError
from spine_gateway.app import create_app
from spine_gateway.cache import ReadCache
from spine_gateway.identity import Identity
from spine_gateway.policy import OpsView
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
    app = create_app(GatewaySettings(API_KEY=MASTER, SPINE_METRICS_SCRAPE_TOKEN=SCRAPE))
    app.state.gateway = _gateway(app.state.settings)  # what the lifespan builds
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        root, prefixed = await client.get("/health"), await client.get("/api/v1/health")
        assert root.status_code == prefixed.status_code == 200
        assert root.json()["status"] == prefixed.json()["status"] == "healthy"
        for path in ("/status", "/api/v1/status"):
            assert (await client.get(path)).json() == {"status": "healthy"}, path
        for path in ("/metrics", "/api/v1/metrics"):
            assert (await client.get(path, headers=_bearer(SCRAPE))).text == "# metrics\n", path
        assert (await client.get("/api/v1/nothing")).status_code == 404


async def test_the_scrape_token_reads_the_prometheus_text_and_nothing_else() -> None:
    """Offline half of the ops policy over HTTP (the real stack's half is
    tests/e2e/test_ops_access_e2e.py): the token is compared as a secret, a near miss is a
    bad key, and it opens neither the JSON summary nor /status's operator view."""
    app = create_app(GatewaySettings(API_KEY=MASTER, SPINE_METRICS_SCRAPE_TOKEN=SCRAPE))
    app.state.gateway = _gateway(app.state.settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        text = await client.get("/metrics", headers=_bearer(SCRAPE))
        assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
        for token in (SCRAPE[:-1], SCRAPE + "x", SCRAPE.upper()):
            r = await client.get("/metrics", headers=_bearer(token))
            assert (r.status_code, r.json()["error_code"]) == (401, "INVALID_API_KEY"), token
        r = await client.get("/metrics")
        assert (r.status_code, r.json()["error_code"]) == (401, "MISSING_API_KEY")
        as_json = {**_bearer(SCRAPE), "Accept": "application/json"}
        r = await client.get("/metrics", headers=as_json)
        assert (r.status_code, r.json()["error_code"]) == (403, "ADMIN_REQUIRED")
        status = await client.get("/status", headers=_bearer(SCRAPE))
        assert status.status_code == 200 and status.json() == {"status": "healthy"}
        assert (await client.get("/status", headers=_bearer(SCRAPE + "x"))).status_code == 401


def test_the_scrape_token_is_a_secret_of_its_own() -> None:
    assert (
        GatewaySettings(API_KEY=MASTER, SPINE_METRICS_SCRAPE_TOKEN="").metrics_scrape_token is None
    )
    token = GatewaySettings(API_KEY=MASTER, SPINE_METRICS_SCRAPE_TOKEN=f"{SCRAPE}\n")
    assert token.metrics_scrape_token == SCRAPE  # a mounted secret's newline is not the token
    assert SCRAPE not in repr(token)
    with pytest.raises(ValidationError, match="must differ from API_KEY"):
        GatewaySettings(API_KEY=MASTER, SPINE_METRICS_SCRAPE_TOKEN=MASTER)
    with pytest.raises(ValidationError, match="at least 16 characters"):
        GatewaySettings(API_KEY=MASTER, SPINE_METRICS_SCRAPE_TOKEN="short")


MASTER = "m" * 20
SCRAPE = "scrape-token-0123456789"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _gateway(settings: GatewaySettings) -> SimpleNamespace:
    """The parts the operations routes reach: identity (no user key exists) and operations."""
    identity = Identity(settings, _NoUsers(), None, ReadCache())  # type: ignore[arg-type]
    return SimpleNamespace(identity=identity, operations=_Operations())


class _NoUsers:
    async def live_key(self, key_hash: str) -> None:
        return None


class _Operations:
    async def status(self, view: OpsView) -> tuple[dict[str, str], bool]:
        assert view is OpsView.LIVENESS  # only anonymous callers and the token here
        return {"status": "healthy"}, True

    async def prometheus(self) -> bytes:
        return b"# metrics\n"
