"""The feed's and the usage series' routes in the app itself (no infrastructure: the lifespan
is not run): ``/executions/stream`` is the feed under both prefixes, not an execution named
"stream"; its cursor and the usage range are checked before anything is read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from spine_gateway.app import create_app
from spine_gateway.cache import ReadCache
from spine_gateway.feed import READY, FeedEvent, format_cursor
from spine_gateway.identity import Identity
from spine_gateway.models import UsageSeriesView
from spine_gateway.settings import GatewaySettings
from spine_gateway.usage_series import UsageRange

MASTER = "m" * 20
ADMIN = {"Authorization": f"Bearer {MASTER}"}


class _Feed:
    """Says where it starts and ends (a real feed goes on until the client leaves)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str | None, Mapping[int, int] | None]] = []

    async def follow(
        self, user_id: str | None, cursor: Mapping[int, int] | None = None
    ) -> AsyncIterator[FeedEvent]:
        self.asked.append((user_id, cursor))
        at = format_cursor(cursor or {0: -1})
        yield FeedEvent(at, READY, {"cursor": at})


class _Series:
    def __init__(self) -> None:
        self.asked: list[tuple[str | None, UsageRange]] = []

    async def series(self, user_id: str | None, span: UsageRange) -> UsageSeriesView:
        self.asked.append((user_id, span))
        return UsageSeriesView.model_validate(
            {
                "user_id": user_id,
                "bucket": span.bucket,
                "from": span.start.isoformat(),
                "to": span.end.isoformat(),
                "buckets": [],
                "totals": dict.fromkeys(("started", "completed", "failed", "cancelled"), 0)
                | {"credits": 0},
            }
        )


class _NoUsers:
    async def live_key(self, key_hash: str) -> None:
        return None

    async def user(self, user_id: str) -> None:
        return None


def _app() -> tuple[Any, _Feed, _Series]:
    settings = GatewaySettings(API_KEY=MASTER)
    app = create_app(settings)
    feed, series = _Feed(), _Series()
    app.state.gateway = SimpleNamespace(
        settings=settings,
        identity=Identity(settings, _NoUsers(), None, ReadCache()),  # type: ignore[arg-type]
        feed=feed,
        usage_series=series,
        users=SimpleNamespace(read=_NoUsers()),
    )
    return app, feed, series


def _events(text: str) -> list[dict[str, Any]]:
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            out.append({**fields, "data": orjson.loads(fields["data"])})
    return out


async def test_the_feed_is_served_under_both_prefixes() -> None:
    app, feed, _ = _app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        for path in ("/api/v1/executions/stream", "/executions/stream"):
            r = await client.get(path, headers=ADMIN)
            assert r.status_code == 200, (path, r.text)
            assert r.headers["content-type"].startswith("text/event-stream")
            (ready,) = _events(r.text)
            assert (ready["event"], ready["id"], ready["data"]) == (
                READY,
                "0:-1",
                {"cursor": "0:-1"},
            )
        # Last-Event-ID before ?after= (a browser's reconnect keeps the first URL)
        r = await client.get(
            "/executions/stream?after=0:3", headers={**ADMIN, "Last-Event-ID": "0:5,1:2"}
        )
        assert r.status_code == 200
        r = await client.get("/api/v1/executions/stream?after=1:7", headers=ADMIN)
        assert r.status_code == 200
    assert feed.asked == [(None, None), (None, None), (None, {0: 5, 1: 2}), (None, {1: 7})]


@pytest.mark.parametrize("prefix", ["/api/v1", ""])
async def test_a_bad_cursor_is_422_and_no_key_401(prefix: str) -> None:
    app, feed, _ = _app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        path = f"{prefix}/executions/stream"
        for bad in ("abc", "0:1;1:2", "-1:3", "0:x", "5"):
            r = await client.get(path, headers={**ADMIN, "Last-Event-ID": bad})
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["error_code"] == "VALIDATION_ERROR"
            r = await client.get(path, params={"after": bad}, headers=ADMIN)
            assert r.status_code == 422, (bad, r.text)
        r = await client.get(path, headers={**ADMIN, "Last-Event-ID": "0:1," * 1000})
        assert r.status_code == 422
        assert (await client.get(path)).status_code == 401
    assert feed.asked == []


@pytest.mark.parametrize("prefix", ["/api/v1", ""])
async def test_usage_checks_its_range_and_the_user(prefix: str) -> None:
    app, _, series = _app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        path = f"{prefix}/usage"
        r = await client.get(path, headers=ADMIN)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["bucket"] == "hour" and body["user_id"] is None
        assert set(body) >= {"from", "to", "buckets", "totals"}
        r = await client.get(
            path,
            params={"from": "2026-01-01T00:00:00Z", "to": "2026-01-03T00:00:00Z", "bucket": "day"},
            headers=ADMIN,
        )
        assert r.status_code == 200 and r.json()["from"] == "2026-01-01T00:00:00+00:00"
        bad: list[dict[str, str]] = [
            {"bucket": "week"},
            {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},  # > 1,000 hours
            {"from": "yesterday"},
            {"user_id": "bad id!"},
        ]
        for params in bad:
            r = await client.get(path, params=params, headers=ADMIN)
            assert r.status_code == 422, (params, r.text)
            assert r.json()["error_code"] == "VALIDATION_ERROR"
        r = await client.get(path, params={"user_id": "ghost"}, headers=ADMIN)
        assert (r.status_code, r.json()["error_code"]) == (404, "USER_NOT_FOUND")
        assert (await client.get(path)).status_code == 401
    assert [(who, span.count) for who, span in series.asked] == [(None, 24), (None, 2)]
