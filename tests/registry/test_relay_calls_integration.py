"""The relay's ``main`` in this process on the real broker, calling a real local HTTP server.

From a catalogue entry and a task on Kafka to what the HTTP agent receives: a call signed
with the relay's key (created at start from ``SPINE_RELAY_SIGNING_KEY_FILE``), which the
SDK's verifier accepts with the public key the relay wrote beside it; and, when the
agent's address is not allowed, no connection at all but an ``AgentResult`` error naming
why. The entry is written to the catalogue directly, as if the registry had accepted it
earlier (before a DNS change, say): the call-time guard is what is left to refuse it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from agent_http import Received, http_reply, serving, success
from spine_agent.http import verify_relay_signature
from spine_agent.testing import TopicReader, publish, publish_tasks, task_message
from spine_contracts import (
    AgentHeartbeat,
    AgentInfo,
    AgentMessage,
    AgentRegistered,
    AgentResult,
    Message,
    topics,
)
from spine_registry.relay.app import main as relay_main
from spine_registry.relay.settings import RelaySettings
from spine_servicekit.kafka import KafkaConfig, make_producer
from spine_servicekit.runtime import ServiceContext
from support import fresh_topics

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

AGENT = "signed-http"
HEALTH = http_reply("200 OK", orjson.dumps({"agent_id": AGENT, "ready": True}))


def agent(request: Received) -> bytes:
    return HEALTH if request.method == "GET" else success("signed")(request)


@asynccontextmanager
async def relay(cfg: KafkaConfig, key_file: Path, allowed: str) -> AsyncIterator[None]:
    """The relay's ``main`` as ``run_service`` would run it."""
    settings = RelaySettings(
        KAFKA_BOOTSTRAP_SERVERS=cfg.bootstrap_servers,
        SPINE_RELAY_ALLOWED_NETWORKS=allowed,
        SPINE_RELAY_SIGNING_KEY_FILE=str(key_file),
        SPINE_RELAY_MAX_RETRIES=0,
        SPINE_RELAY_PROBE_INTERVAL=0.2,
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


def result_of(task: AgentMessage) -> Callable[[Message], bool]:
    def match(m: Message) -> bool:
        return isinstance(m, AgentResult) and m.data.execution_id == task.data.execution_id

    return match


def beat(ready: bool) -> Callable[[Message], bool]:
    def match(m: Message) -> bool:
        return isinstance(m, AgentHeartbeat) and m.data.agent_id == AGENT and m.data.ready is ready

    return match


async def register(cfg: KafkaConfig, endpoint: str) -> None:
    info = AgentInfo(agent_id=AGENT, transport="http", endpoint=endpoint)
    entry = AgentRegistered.build(agent=info, registered=True, active=True)
    await publish(cfg, cfg.topic(topics.REGISTRY_EVENTS), [(AGENT, entry)])


async def test_the_relay_signs_its_calls_with_the_key_it_created(
    kafka: KafkaConfig, tmp_path: Path
) -> None:
    cfg = await fresh_topics(kafka, agents=[AGENT])
    key_file = tmp_path / "relay" / "signing-key.pem"
    task = task_message(AGENT, node_id="n1", input={"user_message": "hi"})
    async with (
        serving(agent) as server,
        TopicReader(cfg, cfg.topic(topics.AGENT_RESULTS)) as results,
        TopicReader(cfg, cfg.topic(topics.REGISTRY_HEARTBEATS)) as beats,
    ):
        await register(cfg, server.url)
        async with relay(cfg, key_file, allowed="127.0.0.1/32"):
            await publish_tasks(cfg, AGENT, task)
            [result] = await results.wait_for(result_of(task), within=60)
            await beats.wait_for(beat(ready=True))  # a signed probe was answered
    assert result.data.status == "success", result.data.error_message
    assert result.data.output["message"] == "signed"
    # what an agent author has: the public key the relay wrote beside its key
    public_key = (tmp_path / "relay" / "signing-key.pem.pub").read_text()
    calls = [r for r in server.requests if r.method == "POST"]
    probes = [r for r in server.requests if r.method == "GET"]
    assert [c.target for c in calls] == ["/execute"]
    assert orjson.loads(calls[0].body)["execution_id"] == task.data.execution_id
    assert probes and {p.target for p in probes} == {"/health"}
    for request in calls + probes:
        verify_relay_signature(public_key, request.headers, request.body, AGENT)


async def test_a_refused_address_is_an_error_result_naming_why_at_call_time(
    kafka: KafkaConfig, tmp_path: Path
) -> None:
    cfg = await fresh_topics(kafka, agents=[AGENT])
    task = task_message(AGENT, node_id="n1")
    async with (
        serving(agent) as server,
        TopicReader(cfg, cfg.topic(topics.AGENT_RESULTS)) as results,
        TopicReader(cfg, cfg.topic(topics.REGISTRY_HEARTBEATS)) as beats,
    ):
        await register(cfg, server.url)
        async with relay(cfg, tmp_path / "signing-key.pem", allowed=""):
            await publish_tasks(cfg, AGENT, task)
            [result] = await results.wait_for(result_of(task), within=60)
            [not_ready, *_] = await beats.wait_for(beat(ready=False))
    assert result.data.status == "error"
    assert result.data.error_message == (
        "refused to connect to 127.0.0.1: loopback address, not allowed by "
        f"SPINE_RELAY_ALLOWED_NETWORKS: POST {server.url}/execute"
    )
    assert isinstance(not_ready, AgentHeartbeat)  # the probe is refused the same way
    assert server.connections == 0
