"""The live feed of a tenant's executions and usage over time, end to end: real services,
one agent (echo), real Kafka/PostgreSQL/Redis, only the public HTTP API (and the auth
events topic, to await the settles that ``/usage`` counts credits from).

The feed sees an execution from its start to its end and never another tenant's; a feed
resumed with ``Last-Event-ID`` (or ``?after=``) gets exactly the rest; the admin's feed
covers every tenant; both prefixes serve it; a revoked key's feed ends within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
import pytest_asyncio
from spine_contracts import CreditsSettled, Message, topics
from spine_gateway.projection import rebuild_projections
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import KafkaConfig
from spine_servicekit.rebuild import rebuild_schema

from .test_gateway_e2e import MASTER, Api, _held_flow, gateway_stack, sse_frames
from .test_gateway_ws_e2e import auth, open_ws, refused

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SERVICES = ("registry", "orchestrator", "auth", "echo", "gateway")
READY = "feed.ready"
ENDS = {"completed", "failed", "cancelled"}


class Settles:
    """Auth's ``CreditsSettled`` per execution, as they are published."""

    def __init__(self) -> None:
        self.charged: dict[str, int] = {}
        self._changed = asyncio.Condition()

    async def apply(self, message: Message, _record: Any) -> None:
        if isinstance(message, CreditsSettled):
            async with self._changed:
                self.charged[message.data.execution_id] = message.data.charged
                self._changed.notify_all()

    async def of(self, *execution_ids: str) -> dict[str, int]:
        async with asyncio.timeout(60), self._changed:
            await self._changed.wait_for(lambda: set(execution_ids) <= set(self.charged))
        return {e: self.charged[e] for e in execution_ids}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(
        kafka, infra, topic_prefix, services=SERVICES, agents=("echo",), flows=("echo_chain",)
    ) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def settles(kafka: KafkaConfig) -> AsyncIterator[Settles]:
    seen = Settles()
    follower = TopicFollower(kafka, kafka.topic(topics.AUTH_EVENTS), seen.apply)
    await follower.start()
    try:
        yield seen
    finally:
        await follower.stop()


async def feed(
    api: Api,
    key: str,
    *,
    last_event_id: str | None = None,
    after: str | None = None,
    prefix: str = "/api/v1",
) -> AsyncIterator[dict[str, Any]]:
    """The feed's events as they arrive (``{"id", "event", "data"}``, the id a string);
    leaving the loop closes the connection."""
    headers = api.auth(key)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    params = {"after": after} if after is not None else {}
    async with api.http.stream(
        "GET", f"{prefix}/executions/stream", headers=headers, params=params
    ) as r:
        assert r.status_code == 200, await r.aread()
        async for event in sse_frames(r):
            yield event


class Reader:
    """One open feed, read in the background: ``ready`` once it has said where it starts,
    ``until(...)`` to await what it has received."""

    def __init__(self, api: Api, key: str, **options: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self.ready = asyncio.Event()
        self.ended = False
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read(api, key, options))

    async def _read(self, api: Api, key: str, options: dict[str, Any]) -> None:
        try:
            async with aclosing(feed(api, key, **options)) as events:
                async for event in events:
                    async with self._changed:
                        self.events.append(event)
                        self.ready.set()
                        self._changed.notify_all()
        finally:
            async with self._changed:
                self.ended = True
                self._changed.notify_all()

    def changes(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] != READY]

    async def until(self, done: Callable[[], bool], within: float = 60) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: done() or self.ended)
        assert done(), self.events

    async def open(self) -> Reader:
        async with asyncio.timeout(30):
            await self.ready.wait()
        assert self.events[0]["event"] == READY
        return self

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def eid(event: dict[str, Any]) -> str:
    return str(event["data"]["execution_id"])


def ended(reader: Reader, *execution_ids: str) -> Callable[[], bool]:
    def check() -> bool:
        finished = {eid(e) for e in reader.changes() if e["data"]["status"] in ENDS}
        return set(execution_ids) <= finished

    return check


async def _run(api: Api, key: str, flow: str = "echo_chain", data: Any = None) -> str:
    r = await api.execute(key, flow, {"x": 1} if data is None else data)
    assert r.status_code == 200, r.text
    return str(r.json()["execution_id"])


async def test_the_feed_follows_own_executions_to_the_end_and_never_another_tenants(
    api: Api,
) -> None:
    alice = await api.create_user(credits=10)
    bob = await api.create_user(credits=10)
    mine = await Reader(api, alice["api_key"]).open()
    admin = await Reader(api, MASTER).open()
    bobs = await Reader(api, bob["api_key"], prefix="").open()  # the root alias too
    try:
        theirs, first = await asyncio.gather(_run(api, bob["api_key"]), _run(api, alice["api_key"]))
        await admin.until(ended(admin, theirs, first))
        await mine.until(ended(mine, first))
        await bobs.until(ended(bobs, theirs))
        # a fence: alice's feed reads past everything committed before its next execution
        fence = await _run(api, alice["api_key"])
        await mine.until(ended(mine, fence))
    finally:
        for reader in (mine, admin, bobs):
            await reader.close()

    changes = mine.changes()
    assert {eid(e) for e in changes} == {first, fence}, changes
    assert {e["data"]["user_id"] for e in changes} == {alice["user_id"]}
    for execution in (first, fence):
        own = [e for e in changes if eid(e) == execution]
        assert [e["data"]["status"] for e in own] == ["running", "completed"], own
        assert [e["event"] for e in own] == ["execution.started", "execution.completed"]
        assert [e["data"]["seq"] for e in own] == sorted(e["data"]["seq"] for e in own)
        assert all(e["data"]["flow_id"] == "echo_chain" for e in own)
    ids = [e["id"] for e in mine.events]
    assert len(set(ids[1:])) == len(ids) - 1  # every change moves the cursor
    assert all(e["id"] == e["data"]["cursor"] for e in mine.events)
    assert {eid(e) for e in bobs.changes()} == {theirs}

    seen_by_admin = {eid(e): e["data"]["user_id"] for e in admin.changes()}
    assert seen_by_admin[first] == alice["user_id"]
    assert seen_by_admin[theirs] == bob["user_id"]
    for execution in (first, theirs):
        statuses = [e["data"]["status"] for e in admin.changes() if eid(e) == execution]
        assert statuses == ["running", "completed"], statuses


async def test_a_resumed_feed_gets_exactly_the_rest(api: Api) -> None:
    user = await api.create_user(credits=10)
    key = user["api_key"]
    flow = await _held_flow(api, key)  # it waits for input half-way
    first = await Reader(api, key).open()
    try:
        execution = await _run(api, key, flow)
        await first.until(lambda: any(e["event"] == "execution.started" for e in first.events))
    finally:
        await first.close()  # the client goes away after the start
    started = next(e for e in first.events if e["event"] == "execution.started")
    assert eid(started) == execution

    resumed = await Reader(api, key, last_event_id=started["id"]).open()
    try:
        assert resumed.events[0]["id"] == started["id"]  # it starts where it was told
        await resumed.until(
            lambda: any(e["data"]["status"] == "waiting_input" for e in resumed.changes())
        )
        r = await api.http.post(
            f"/api/v1/executions/{execution}/input",
            json={"input": {"message": "hi"}},
            headers=api.auth(key),
        )
        assert r.status_code == 200, r.text
        await resumed.until(ended(resumed, execution))
    finally:
        await resumed.close()
    rest = resumed.changes()
    assert [(e["event"], e["data"]["status"]) for e in rest] == [
        ("execution.node_waiting_input", "waiting_input"),
        ("execution.input_received", "running"),
        ("execution.completed", "completed"),
    ], rest
    assert {eid(e) for e in rest} == {execution}

    # ?after= on the root alias, after the end: the same rest at once, nothing repeated
    again = await Reader(api, key, after=started["id"], prefix="").open()
    try:
        await again.until(ended(again, execution))
    finally:
        await again.close()
    assert [e["id"] for e in again.changes()] == [e["id"] for e in rest]
    # resumed from the last event: nothing more (the feed stays open for what comes)
    last = await Reader(api, key, last_event_id=rest[-1]["id"]).open()
    try:
        later = await _run(api, key)  # a new one after it: the first thing it sees
        await last.until(ended(last, later))
    finally:
        await last.close()
    assert {eid(e) for e in last.changes()} == {later}


async def test_a_revoked_keys_feed_ends_within_a_second(api: Api) -> None:
    user = await api.create_user(credits=3)
    r = await api.http.post(
        "/api/v1/keys",
        json={"name": "feed", "scopes": ["executions:read"]},
        headers=api.auth(user["api_key"]),
    )
    assert r.status_code in (200, 201), r.text
    key = r.json()
    reader = await Reader(api, key["api_key"]).open()
    try:
        revoked_at = time.monotonic()
        r = await api.http.delete(
            f"/api/v1/keys/{key['key_id']}", headers=api.auth(user["api_key"])
        )
        assert r.status_code == 200, r.text
        await reader.until(lambda: reader.ended, within=10)
        took = time.monotonic() - revoked_at
    finally:
        await reader.close()
    assert took <= 2.0, f"the feed ended {took:.2f} s after the revocation"
    assert reader.events[-1]["event"] == "error"
    assert reader.events[-1]["data"]["code"] == "KEY_REVOKED"


# --- usage over time ------------------------------------------------------------------------


async def test_usage_counts_executions_and_credits_per_bucket(api: Api, settles: Settles) -> None:
    user = await api.create_user(credits=20)
    other = await api.create_user(credits=20)
    key = user["api_key"]
    mine = [await _run(api, key), await _run(api, key)]
    theirs = await _run(api, other["api_key"])
    for execution, k in ((mine[0], key), (mine[1], key), (theirs, other["api_key"])):
        assert (await api.sse(k, execution))[-1]["event"] == "execution.completed"
    charged = await settles.of(*mine, theirs)
    # the settles are on the topic; /users/me waits for the read model to hold them
    for k in (key, other["api_key"]):
        me = await api.http.get("/api/v1/users/me", headers=api.auth(k))
        assert me.status_code == 200
        assert me.json()["tokens"] == {"input": 0, "output": 0}  # echo runs no model

    r = await api.http.get("/api/v1/usage", headers=api.auth(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bucket"] == "hour" and body["user_id"] == user["user_id"]
    buckets = body["buckets"]
    assert len(buckets) == 24
    now = datetime.now(UTC)
    current = datetime.fromisoformat(buckets[-1]["start"])
    assert current <= now and (now - current).total_seconds() < 3600 + 5
    assert [datetime.fromisoformat(b["start"]) for b in buckets] == sorted(
        datetime.fromisoformat(b["start"]) for b in buckets
    )
    totals = body["totals"]
    assert (totals["started"], totals["completed"], totals["failed"]) == (2, 2, 0)
    assert totals["credits"] == charged[mine[0]] + charged[mine[1]] > 0
    assert (totals["input_tokens"], totals["output_tokens"], totals["tokens"]) == (0, 0, 0)
    for execution in mine:  # each in the bucket of its own hour
        row = (await api.http.get(f"/api/v1/executions/{execution}", headers=api.auth(key))).json()
        hour = datetime.fromisoformat(row["created_at"]).replace(minute=0, second=0, microsecond=0)
        bucket = next(b for b in buckets if datetime.fromisoformat(b["start"]) == hour)
        assert bucket["started"] >= 1 and bucket["credits"] >= 1
    assert sum(b["started"] for b in buckets) == 2  # the other user's does not count
    assert sum(1 for b in buckets if b["started"] == 0 and b["credits"] == 0) >= 22  # zeros

    # the root alias, by day
    r = await api.http.get("/usage", params={"bucket": "day"}, headers=api.auth(key))
    assert r.status_code == 200 and r.json()["totals"]["credits"] == totals["credits"]

    everyone = (await api.http.get("/api/v1/usage", headers=api.auth(MASTER))).json()
    assert everyone["user_id"] is None
    assert everyone["totals"]["started"] >= 3
    assert everyone["totals"]["credits"] >= sum(charged.values())
    one = await api.http.get(
        "/api/v1/usage", params={"user_id": other["user_id"]}, headers=api.auth(MASTER)
    )
    assert one.status_code == 200, one.text
    assert one.json()["totals"]["started"] == 1
    assert one.json()["totals"]["credits"] == charged[theirs]

    # another user's usage is not the caller's to see: as if the user did not exist
    r = await api.http.get(
        "/api/v1/usage", params={"user_id": other["user_id"]}, headers=api.auth(key)
    )
    assert (r.status_code, r.json()["error_code"]) == (404, "USER_NOT_FOUND")
    r = await api.http.get(
        "/api/v1/usage", params={"user_id": user["user_id"]}, headers=api.auth(key)
    )
    assert r.status_code == 200 and r.json()["totals"] == totals


async def test_bad_usage_parameters_are_422(api: Api) -> None:
    key = (await api.create_user(credits=1))["api_key"]
    for params in (
        {"bucket": "week"},
        {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z", "bucket": "day"},
        {"from": "not a time"},
    ):
        for path in ("/api/v1/usage", "/usage"):
            r = await api.http.get(path, params=params, headers=api.auth(key))
            assert r.status_code == 422, (path, params, r.text)
            assert r.json()["error_code"] == "VALIDATION_ERROR", r.text
    many: defaultdict[int, int] = defaultdict(
        int
    )  # the largest range answers: 1,000 day buckets of zeros
    r = await api.http.get(
        "/api/v1/usage",
        params={"from": "2024-01-01T00:00:00Z", "to": "2026-09-27T00:00:00Z", "bucket": "day"},
        headers=api.auth(key),
    )
    assert r.status_code == 200, r.text
    for b in r.json()["buckets"]:
        many[b["started"]] += 1
    assert sum(many.values()) == 1000 and many[0] == 1000


async def test_a_rebuild_of_the_read_model_recreates_the_feed_and_the_credits(
    api: Api, kafka: KafkaConfig, infra: dict[str, str]
) -> None:
    """The feed's rows are keyed by the events' positions and the credits by execution:
    replayed from offset 0 they equal the live rows (a client's cursor outlives a rebuild).
    Runs last: the module's executions are its rows."""
    report = await rebuild_schema(
        kafka,
        infra["DATABASE_URL"],
        api.env["SPINE_GATEWAY_SCHEMA"],
        rebuild_projections(),
        swap=False,
        catch_up_timeout_s=60,
    )
    tables = {t.table: t for t in report.tables}
    assert report.equal, report.summary()
    assert tables["execution_feed"].live_rows and tables["execution_feed"].equal
    assert tables["credits_charged"].live_rows and tables["credits_charged"].equal


# --- the same feed over a WebSocket ----------------------------------------------------------


def feed_ws_url(api: Api, after: str | None = None, root: bool = False) -> str:
    base = str(api.http.base_url).replace("http://", "ws://").rstrip("/")
    url = f"{base}{'' if root else '/api/v1'}/executions/ws"
    return url if after is None else f"{url}?{urlencode({'after': after})}"


async def _frames_until(ws: Any, done: Callable[[list[dict[str, Any]]], bool]) -> list[Any]:
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(60):
        while not done(frames):
            frames.append(orjson.loads(await ws.recv()))
    return frames


async def test_the_feed_socket_sends_the_sse_feeds_items_and_resumes_by_cursor(
    api: Api,
) -> None:
    alice = await api.create_user(credits=10)
    bob = await api.create_user(credits=10)
    key = alice["api_key"]
    sse = await Reader(api, key).open()
    try:
        async with open_ws(feed_ws_url(api), key) as ws:  # the header
            [ready] = await _frames_until(ws, lambda f: len(f) == 1)
            assert ready["type"] == READY and ready["cursor"]
            theirs, mine = await asyncio.gather(
                _run(api, bob["api_key"]), _run(api, key)
            )  # bob's runs meanwhile and must not show
            frames = await _frames_until(
                ws, lambda f: any(x["execution_id"] == mine and x["status"] in ENDS for x in f)
            )
        await sse.until(ended(sse, mine))
    finally:
        await sse.close()
    assert {f["execution_id"] for f in frames} == {mine}, frames
    assert [f["status"] for f in frames] == ["running", "completed"]
    # the same items as the SSE feed: its data, its ids as cursors
    assert frames == [e["data"] for e in sse.changes() if eid(e) == mine]
    assert theirs not in {f["execution_id"] for f in frames}

    # resumed after the start, at the root path, authenticated by a first message
    async with open_ws(feed_ws_url(api, after=frames[0]["cursor"], root=True)) as ws:
        await auth(ws, key)
        rest = await _frames_until(ws, lambda f: len(f) == 2)
    assert rest[0] == {"type": READY, "cursor": frames[0]["cursor"]}
    assert rest[1] == frames[1]  # exactly the rest: nothing lost, nothing repeated

    bad = await refused(feed_ws_url(api, after="not a cursor"), key)
    assert bad.code == 4422, bad
    nobody = await refused(feed_ws_url(api), "sk_not_a_key")
    assert nobody.code == 4401, nobody
