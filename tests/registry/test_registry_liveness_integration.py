"""Liveness of HTTP agents end to end: the registry's and the relay's ``main`` in this process
on the real broker and PostgreSQL, probing real sockets on 127.0.0.1.

A registration makes no agent active: an HTTP agent with nothing behind its endpoint stays
inactive through every probe; one that answers becomes active with the relay's first probe,
made as soon as the relay sees the registration (the probe interval here is far longer than
the test); re-pointed elsewhere it is inactive on the registration's own entry, a probe of
the old endpoint that was in flight then changes nothing, and the new endpoint is probed at
once. Every wait is for a record on a topic, never a sleep.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from agent_http import Received, http_reply, serving
from crash.helpers import registry_service
from spine_agent.testing import publish, wait_caught_up
from spine_contracts import (
    AgentHeartbeat,
    AgentInfo,
    AgentRegistered,
    AgentStatusChanged,
    RegisterAgent,
    topics,
)
from spine_contracts.signing import RELAY_SIGNER
from spine_registry.relay.app import main as relay_main
from spine_registry.relay.settings import RelaySettings
from spine_servicekit.kafka import KafkaConfig, make_producer
from spine_servicekit.runtime import ServiceContext
from support import TopicTail, fresh_topics, issue_agent

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

AGENT = "live-http"
LOOPBACK = "127.0.0.1/32"  # the test's endpoints: allowed for the registry and the relay
HEALTH = http_reply("200 OK", orjson.dumps({"agent_id": AGENT, "ready": True}))


def dead_endpoint() -> str:
    """An address where nothing listens: the port is free once the socket is closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@asynccontextmanager
async def relay(cfg: KafkaConfig, key_file: Path, **knobs: Any) -> AsyncIterator[None]:
    """The relay's ``main`` as ``run_service`` would run it."""
    settings = RelaySettings(
        KAFKA_BOOTSTRAP_SERVERS=cfg.bootstrap_servers,
        SPINE_RELAY_ALLOWED_NETWORKS=LOOPBACK,
        SPINE_RELAY_SIGNING_KEY_FILE=key_file,
        **knobs,
    )
    producer = make_producer(cfg)
    await producer.start()
    ctx = ServiceContext("relay", settings, cfg, producer, "relay-test", asyncio.Event())
    task = asyncio.create_task(relay_main(ctx))
    try:
        yield
    finally:
        ctx.stopping.set()
        async with asyncio.timeout(30):
            await task
        await producer.stop()


@asynccontextmanager
async def registry_and_relay(
    kafka: KafkaConfig, database_url: str, pg_schema: str, key_file: Path, **relay_knobs: Any
) -> AsyncIterator[KafkaConfig]:
    """Fresh topics, the relay issued (its key signs its beats), the registry running and
    knowing that key, then the relay. Leaves the registry running after the relay stops
    (see :func:`settled`)."""
    cfg = await fresh_topics(kafka, agents=[AGENT])
    await issue_agent(cfg, RELAY_SIGNER, key_file=key_file)
    async with registry_service(
        cfg,
        database_url,
        pg_schema,
        SPINE_RELAY_ALLOWED_NETWORKS=LOOPBACK,
        SPINE_REGISTRY_HEARTBEAT_TTL=300,  # no sweep within the test: only probes decide
    ):
        async with TopicTail(cfg, topics.REGISTRY_EVENTS) as events:
            await events.until(lambda t: bool(mine(t, RELAY_SIGNER)))  # its key recorded
        async with relay(cfg, key_file, **relay_knobs):
            yield cfg
        await settled(cfg)


async def settled(cfg: KafkaConfig) -> None:
    """The relay has stopped: the registry has decided every beat it wrote once its group's
    offsets reach the end of the heartbeats topic."""
    await wait_caught_up(
        cfg, f"{cfg.prefix}registry", cfg.topic(topics.REGISTRY_HEARTBEATS), within=30
    )


def mine(tail: TopicTail, agent_id: str = AGENT) -> list[AgentRegistered | AgentStatusChanged]:
    return [
        m
        for m in tail.messages
        if isinstance(m, AgentRegistered | AgentStatusChanged) and m.data.agent.agent_id == agent_id
    ]


def probes(tail: TopicTail, endpoint: str, ready: bool) -> list[AgentHeartbeat]:
    return [
        m
        for m in tail.messages
        if isinstance(m, AgentHeartbeat)
        and m.data.agent_id == AGENT
        and m.data.endpoint == endpoint
        and m.data.ready is ready
    ]


async def register(cfg: KafkaConfig, endpoint: str, **fields: object) -> RegisterAgent:
    """The admin's registration, as the gateway sends it (an HTTP agent signs nothing)."""
    info = AgentInfo.model_validate(
        {"agent_id": AGENT, "transport": "http", "endpoint": endpoint, **fields}
    )
    command = RegisterAgent.build(agent=info, owner="system")
    await publish(cfg, cfg.topic(topics.REGISTRY_REQUESTS), [(AGENT, command)])
    return command


async def test_an_http_agent_with_nothing_behind_it_never_becomes_active(
    kafka: KafkaConfig, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    dead = dead_endpoint()
    key_file = tmp_path / "relay" / "signing-key.pem"
    async with registry_and_relay(
        kafka, database_url, pg_schema, key_file, SPINE_RELAY_PROBE_INTERVAL=0.2
    ) as cfg:
        async with (
            TopicTail(cfg, topics.REGISTRY_EVENTS) as events,
            TopicTail(cfg, topics.REGISTRY_HEARTBEATS) as beats,
        ):
            command = await register(cfg, dead)
            # the first probe's verdict is on the entry: waiting becomes inactive
            await events.until(lambda t: len(mine(t)) >= 2)
            await beats.until(lambda t: len(probes(t, dead, ready=False)) >= 3)  # 3 rounds
    async with TopicTail(cfg, topics.REGISTRY_EVENTS) as events:
        await events.to_end()
    registered, verdict = mine(events)
    assert isinstance(registered, AgentRegistered)
    assert registered.causation_id == str(command.message_id)
    assert (registered.data.active, registered.data.last_seen) == (False, None)
    assert registered.data.reason == f"registered: waiting for a successful probe of {dead}"
    assert isinstance(verdict, AgentStatusChanged) and not verdict.data.active
    assert verdict.data.last_seen is not None
    reason = verdict.data.reason or ""
    assert reason.startswith("heartbeat: not ready (") and f"GET {dead}/health" in reason, reason


async def test_a_probe_makes_an_agent_active_and_re_pointing_takes_it_out_at_once(
    kafka: KafkaConfig, database_url: str, pg_schema: str, tmp_path: Path
) -> None:
    holding = False
    held, release = asyncio.Event(), asyncio.Event()

    async def answer(request: Received) -> bytes:
        if holding:  # a probe kept in flight while the agent is re-pointed
            held.set()
            await release.wait()
        return HEALTH

    dead = dead_endpoint()
    key_file = tmp_path / "relay" / "signing-key.pem"
    async with (
        serving(answer) as live,
        # a probe every minute: whatever happens within the test is the probe made at once
        registry_and_relay(
            kafka,
            database_url,
            pg_schema,
            key_file,
            SPINE_RELAY_PROBE_INTERVAL=60,
            SPINE_RELAY_PROBE_TIMEOUT=60,
        ) as cfg,
        TopicTail(cfg, topics.REGISTRY_EVENTS) as events,
        TopicTail(cfg, topics.REGISTRY_HEARTBEATS) as beats,
    ):
        await register(cfg, live.url)
        await events.until(lambda t: any(e.data.active for e in mine(t)), within=20)
        [registered, up] = mine(events)
        assert not registered.data.active and isinstance(up, AgentStatusChanged)

        holding = True  # the next probe of the live endpoint waits for `release`
        await register(cfg, live.url, description="same endpoint, new description")
        async with asyncio.timeout(20):
            await held.wait()  # that re-registration was probed at once, and it is in flight
        command = await register(cfg, dead)
        await events.until(
            lambda t: any(e.causation_id == str(command.message_id) for e in mine(t))
        )
        release.set()
        # the in-flight probe reports the old endpoint ready; then the new one is probed
        await beats.until(lambda t: len(probes(t, live.url, ready=True)) >= 2)
        await beats.until(lambda t: bool(probes(t, dead, ready=False)), within=20)
        await events.until(lambda t: mine(t)[-1].data.last_seen is not None)
    async with TopicTail(cfg, topics.REGISTRY_EVENTS) as events:
        await events.to_end()
    entries = mine(events)
    kept, moved = entries[2], entries[3]
    assert isinstance(kept, AgentRegistered) and kept.data.active  # same endpoint: still up
    assert isinstance(moved, AgentRegistered) and moved.causation_id == str(command.message_id)
    assert (moved.data.active, moved.data.last_seen) == (False, None)  # at once, on itself
    stale = probes(beats, live.url, ready=True)[-1]
    assert stale.occurred_at > moved.occurred_at  # it landed after the re-pointing...
    after = entries[4:]
    assert [(type(e), e.data.active) for e in after] == [(AgentStatusChanged, False)]
    assert f"GET {dead}/health" in (after[0].data.reason or "")
    # ...and changed nothing: the only entry after it is the new endpoint's failed probe
    assert after[0].causation_id == str(probes(beats, dead, ready=False)[0].message_id)
