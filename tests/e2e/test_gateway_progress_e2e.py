"""Agents' progress end to end (issue 21, "Streaming"): an issued agent, logged in as its own
principal, reports progress while it works; the gateway streams it live on SSE (no ``id:``
line) and on the WebSocket, never in ``/events`` nor on a resume; progress signed by
another agent, or for a node that has finished, is dropped and counted.

Real services (registry, orchestrator, auth, gateway) and the real broker; the agent runs
in-process so the test decides when it streams and when it answers (events, not sleeps).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import orjson
import pytest
import pytest_asyncio
from spine_agent import Agent, AgentInfo, Task
from spine_agent.testing import serving
from spine_contracts import AgentProgress, topics
from spine_contracts.signing import Signer
from spine_kafka.clients import Outgoing, make_producer
from spine_kafka.security import KafkaSecurity
from spine_servicekit.kafka import KafkaConfig
from support import issue_agent, login_env
from websockets.exceptions import ConnectionClosed

from .test_gateway_e2e import MASTER, Api, gateway_stack, sse_frames
from .test_gateway_ws_e2e import open_ws, ws_url

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WRITER = "writer"
INTRUDER = "intruder"
PIECES = 8
PROGRESS = "execution.node_progress"
TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(
        kafka,
        infra,
        topic_prefix,
        services=("registry", "orchestrator", "auth", "gateway"),
        agents=(),
        flows=(),
    ) as client:
        yield client


class Seen:
    """What a client received so far, and a way to await what it should receive next."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

    async def add(self, item: dict[str, Any]) -> None:
        async with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    async def until(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
        async with asyncio.timeout(60), self._changed:
            await self._changed.wait_for(lambda: predicate(self.items))


def progress_text(items: list[dict[str, Any]], node_id: str) -> str:
    """The node's streamed text, from SSE events (``data`` is the progress) or WebSocket
    frames (``data`` too)."""
    return "".join(
        i["data"]["text"] or ""
        for i in items
        if i.get("event", i.get("type")) == PROGRESS and i["data"]["node_id"] == node_id
    )


def expected_text(node_id: str) -> str:
    return "".join(f"{node_id}{i} " for i in range(PIECES))


def has_event(type_: str, node_id: str) -> Callable[[list[dict[str, Any]]], bool]:
    def check(items: list[dict[str, Any]]) -> bool:
        for i in items:
            kind = i.get("event", i.get("type"))
            data = i["data"].get("data", i["data"]) if kind != PROGRESS else i["data"]
            if kind == type_ and data.get("node_id") == node_id:
                return True
        return False

    return check


async def dropped(api: Api, reason: str) -> float:
    text = (await api.http.get("/metrics", headers=api.auth(MASTER))).text
    found = re.search(
        rf'^spine_gateway_progress_dropped_total\{{reason="{reason}"\}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


async def until_dropped(api: Api, reason: str, at_least: float) -> None:
    async with asyncio.timeout(30):
        while await dropped(api, reason) < at_least:  # noqa: ASYNC110 - a counter has no event
            await asyncio.sleep(0.1)


def own_login(kafka: KafkaConfig, infra: dict[str, str], credentials: Any) -> KafkaConfig:
    """The agent's own principal on a secured broker (so its ACLs are what is tested)."""
    if credentials is None:
        return kafka
    return replace(kafka, security=KafkaSecurity.from_env({**infra, **login_env(credentials)}))


async def test_progress_is_live_on_sse_and_websocket_and_only_from_the_dispatched_agent(
    api: Api, kafka: KafkaConfig, infra: dict[str, str]
) -> None:
    assert api.stack is not None
    writer_issued = await issue_agent(kafka, WRITER)
    intruder_issued = await issue_agent(kafka, INTRUDER)
    writer_signer = Signer.from_file(writer_issued.key_file)
    intruder_signer = Signer.from_file(intruder_issued.key_file)

    go: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
    finish: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
    agent = Agent(AgentInfo(agent_id=WRITER, name=WRITER, capabilities=("testing",)))

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        await go[task.node_id].wait()  # the test's streams are open
        for i in range(PIECES):
            await task.progress(text=f"{task.node_id}{i} ", tokens=i + 1, status="writing")
            await asyncio.sleep(0.03)
        await finish[task.node_id].wait()
        return {"text": expected_text(task.node_id)}

    async with serving(
        agent,
        own_login(kafka, infra, writer_issued.credentials_file),
        signer=writer_signer,
        heartbeat_interval=1,
    ):
        await api.stack.agents_active(WRITER)
        user = await api.create_user(credits=10)
        key = user["api_key"]
        flow_id = f"progress_{os.urandom(4).hex()}"
        flow = {
            "flow_id": flow_id,
            "nodes": [
                {"id": "a", "agent_id": WRITER},
                {"id": "b", "agent_id": WRITER, "depends_on": ["a"]},
            ],
        }
        created = await api.http.post("/api/v1/flows", json=flow, headers=api.auth(key))
        assert created.status_code == 201, created.text
        r = await api.execute(key, flow_id, {"topic": "logs"})
        assert r.status_code in (200, 202), r.text
        eid = r.json()["execution_id"]

        sse, ws = Seen(), Seen()
        ws_close: list[int | None] = []

        async def read_sse() -> None:
            path = f"/api/v1/executions/{eid}/stream"
            async with api.http.stream("GET", path, headers=api.auth(key)) as resp:
                assert resp.status_code == 200
                async with aclosing(sse_frames(resp, ids=int)) as frames:
                    async for event in frames:
                        await sse.add(event)
                        if event["event"] in TERMINAL:
                            return

        async def read_ws() -> None:
            async with open_ws(ws_url(api, eid), key) as socket:
                try:
                    while True:
                        await ws.add(orjson.loads(await socket.recv()))
                except ConnectionClosed as exc:
                    ws_close.append(exc.rcvd.code if exc.rcvd is not None else None)

        readers = [asyncio.create_task(read_sse()), asyncio.create_task(read_ws())]
        try:
            # both streams are open (they saw the dispatch): now the agent streams node a
            await sse.until(has_event("execution.node_dispatched", "a"))
            await ws.until(has_event("execution.node_dispatched", "a"))
            go["a"].set()
            await sse.until(lambda items: progress_text(items, "a") == expected_text("a"))
            await ws.until(lambda items: progress_text(items, "a") == expected_text("a"))

            # while a runs: the intruder claims to be the writer, then speaks as itself
            topic = kafka.topic(topics.AGENT_PROGRESS)
            unverified_before = await dropped(api, "unverified")
            other_before = await dropped(api, "other_agent")
            finished_before = await dropped(api, "finished")
            producer = make_producer(kafka)
            await producer.start()
            try:

                async def forge(node: str, as_agent: str, signer: Signer, text: str) -> None:
                    message = AgentProgress.build(
                        execution_id=eid,
                        node_id=node,
                        attempt=1,
                        agent_id=as_agent,
                        seq=99,
                        text=text,
                    )
                    k, value, headers = Outgoing(topic, eid, message).encode_signed(
                        signer, kafka.prefix
                    )
                    await producer.send_and_wait(topic, value=value, key=k, headers=headers)

                await forge("a", WRITER, intruder_signer, "FORGED ")
                await forge("a", INTRUDER, intruder_signer, "FORGED ")
                await until_dropped(api, "unverified", unverified_before + 1)
                await until_dropped(api, "other_agent", other_before + 1)

                # a finishes, b starts; progress for a now comes too late, even correctly
                # signed by the agent it was dispatched to
                finish["a"].set()
                await sse.until(has_event("execution.node_dispatched", "b"))
                await forge("a", WRITER, writer_signer, "LATE ")
                await until_dropped(api, "finished", finished_before + 1)
            finally:
                await producer.stop()

            go["b"].set()
            await sse.until(lambda items: progress_text(items, "b") == expected_text("b"))
            finish["b"].set()
            async with asyncio.timeout(60):
                await asyncio.gather(*readers)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    # SSE: progress without an id, the trail's ids contiguous as ever
    progress_events = [e for e in sse.items if e["event"] == PROGRESS]
    trail_events = [e for e in sse.items if e["event"] != PROGRESS]
    assert progress_events and all("id" not in e for e in progress_events)
    assert all(e["data"]["agent_id"] == WRITER for e in progress_events)
    assert set(progress_events[0]["data"]) == {
        "node_id",
        "agent_id",
        "attempt",
        "seq",
        "text",
        "tokens",
        "status",
    }
    ids = [e["id"] for e in trail_events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert trail_events[-1]["event"] == "execution.completed"
    for node in ("a", "b"):
        assert progress_text(sse.items, node) == expected_text(node)
        assert progress_text(ws.items, node) == expected_text(node)
    everything = orjson.dumps(sse.items + ws.items).decode()
    assert "FORGED" not in everything and "LATE" not in everything

    # WebSocket: the same trail frames with their seq; progress frames carry none
    ws_progress = [f for f in ws.items if f["type"] == PROGRESS]
    ws_trail = [f for f in ws.items if f["type"] != PROGRESS]
    assert ws_progress and all(set(f) == {"type", "data"} for f in ws_progress)
    assert [f["seq"] for f in ws_trail] == ids
    assert ws_close == [1000]

    # never stored: /events is the trail alone; a resume replays no progress
    stored = (await api.http.get(f"/api/v1/executions/{eid}/events", headers=api.auth(key))).json()
    assert [e["seq"] for e in stored["events"]] == ids
    assert PROGRESS not in {e["type"] for e in stored["events"]}
    resumed = await api.sse(key, eid, last_event_id=ids[0])
    assert PROGRESS not in {e["event"] for e in resumed}
    assert [e["id"] for e in resumed] == ids[1:]
