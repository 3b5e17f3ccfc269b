"""An agent started while the broker is away (restarting, or started together with it).

The chaos run once waited in vain for a restarted echo agent: started during a broker
restart, its producer could not bootstrap, and the goodbye heartbeat then sent on that
never-started producer waited forever (aiokafka's metadata task had never started), with
the process alive, silent and beating no more. Now each start-up step is bounded and
retried, logged as ``kafka_unavailable_retrying``, for up to ``startup_timeout`` seconds;
then the agent stops with ``AgentFailed`` and its process exits non-zero.

"Away" is a local port nothing listens on (connections refused); "back" is a TCP forwarder
opened on that port to the real broker (which then advertises its own address).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from spine_agent import Agent, AgentFailed, AgentInfo, Task
from spine_agent.testing import TopicReader, publish_tasks, task_message
from spine_contracts import AgentHeartbeat, AgentResult, RegisterAgent, topics
from spine_contracts.signing import Signer, load_or_create_key
from spine_kafka.clients import ensure_topics
from spine_kafka.security import SECURITY_ENV, KafkaSecurity
from spine_servicekit.kafka import KafkaConfig
from support import forward, log_tail, spawn, stop

pytestmark = [pytest.mark.asyncio(loop_scope="session")]

WORKER = Path(__file__).with_name("_sdk_worker.py")
#: a secured broker's login: the agent then creates nothing and starts its producer first,
#: as every agent of a `make up` installation does
SASL = KafkaSecurity(
    security_protocol="SASL_PLAINTEXT", sasl_username="agent-nobody", sasl_password="unused"
)


def _refusing_port() -> int:
    """A local port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _agent(agent_id: str) -> Agent:
    agent = Agent(AgentInfo(agent_id=agent_id, capabilities=("testing",)), drain_timeout=5)

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        return {"echo": task.input}

    return agent


@dataclass
class _Logs:
    """What the SDK logged while watched; ``retried`` is set at its first retry."""

    events: list[MutableMapping[str, Any]] = field(default_factory=list)
    retried: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> Any:
        self.events.append(event)
        if event.get("event") == "kafka_unavailable_retrying":
            self.retried.set()
        raise structlog.DropEvent

    def named(self, name: str) -> list[MutableMapping[str, Any]]:
        return [e for e in self.events if e.get("event") == name]


@contextmanager
def _watching_logs() -> Iterator[_Logs]:
    """structlog's ``capture_logs``, with an event to await instead of polling the list."""
    logs = _Logs()
    previous = structlog.get_config()["processors"]
    structlog.configure(processors=[logs])
    try:
        yield logs
    finally:
        structlog.configure(processors=previous)


@pytest.mark.parametrize("security", [SASL, KafkaSecurity()], ids=["sasl", "plaintext"])
async def test_a_broker_that_never_comes_stops_the_agent_after_the_timeout(
    security: KafkaSecurity,
) -> None:
    cfg = KafkaConfig(
        bootstrap_servers=f"127.0.0.1:{_refusing_port()}", prefix="nobroker.", security=security
    )
    stopping = asyncio.Event()
    with _watching_logs() as logs, pytest.raises(AgentFailed) as failed:
        async with asyncio.timeout(60):  # it used to hang here, for good
            await _agent("sdk-nobroker").serve(
                cfg, stopping, signer=Signer.generate(), startup_timeout=2
            )
    assert "SPINE_KAFKA_STARTUP_TIMEOUT" in str(failed.value)
    assert failed.value.__cause__ is not None
    retries = logs.named("kafka_unavailable_retrying")
    assert retries, "it retried before giving up"
    step = "start its producer" if security.sasl else "create its tasks topic"
    assert {r["step"] for r in retries} == {step}
    [gave_up] = logs.named("kafka_unavailable_giving_up")
    assert gave_up["attempts"] == len(retries) + 1
    assert not logs.named("agent_started")


async def test_a_stop_ends_the_wait_for_the_broker() -> None:
    cfg = KafkaConfig(
        bootstrap_servers=f"127.0.0.1:{_refusing_port()}", prefix="nobroker.", security=SASL
    )
    stopping = asyncio.Event()
    with _watching_logs() as logs:
        serving = asyncio.create_task(
            _agent("sdk-nobroker").serve(
                cfg, stopping, signer=Signer.generate(), startup_timeout=600
            )
        )
        async with asyncio.timeout(30):
            await logs.retried.wait()
        stopping.set()  # SIGTERM while it waits
        async with asyncio.timeout(30):
            await serving  # returns: no error, nothing started
    assert not logs.named("agent_started")
    assert logs.named("agent_stopped")


@pytest.mark.integration
async def test_an_agent_started_before_the_broker_comes_up_once_it_is_there(
    kafka: KafkaConfig,
) -> None:
    agent_id = "sdk-late-broker"
    await ensure_topics(kafka, specs=(), agent_ids=[agent_id])  # as issuing it does
    port = _refusing_port()
    host, _, real_port = kafka.bootstrap_servers.split(",")[0].rpartition(":")
    cfg = replace(kafka, bootstrap_servers=f"127.0.0.1:{port}")
    stopping = asyncio.Event()
    task = task_message(agent_id, input={"x": 1})

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(host or "127.0.0.1", int(real_port))
        await asyncio.gather(forward(r, uw), forward(ur, w))

    async with (
        TopicReader(kafka, kafka.topic(topics.REGISTRY_COMMANDS)) as commands,
        TopicReader(kafka, kafka.topic(topics.REGISTRY_HEARTBEATS)) as beats,
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
    ):
        with _watching_logs() as logs:
            serving = asyncio.create_task(
                _agent(agent_id).serve(
                    cfg,
                    stopping,
                    signer=Signer.generate(),
                    heartbeat_interval=0.2,
                    startup_timeout=120,
                )
            )
            try:
                async with asyncio.timeout(30):
                    await logs.retried.wait()  # nothing listens yet: it said so and waits
                assert not serving.done()
                server = await asyncio.start_server(pipe, "127.0.0.1", port)  # the broker is back
                try:
                    await commands.wait_for(
                        lambda m: (
                            isinstance(m, RegisterAgent) and m.data.agent.agent_id == agent_id
                        ),
                        within=60,
                    )
                    await beats.wait_for(
                        lambda m: (
                            isinstance(m, AgentHeartbeat)
                            and m.data.agent_id == agent_id
                            and m.data.ready
                        ),
                        within=60,
                    )
                    await publish_tasks(kafka, agent_id, task, transactional=True)
                    [result] = await results.wait_for(
                        lambda m: (
                            isinstance(m, AgentResult)
                            and m.data.execution_id == task.data.execution_id
                        ),
                        within=60,
                    )
                finally:
                    server.close()
            finally:
                stopping.set()
                async with asyncio.timeout(60):
                    await serving
    assert result.data.status == "success" and result.data.output == {"echo": {"x": 1}}
    assert {r["step"] for r in logs.named("kafka_unavailable_retrying")} == {"start its producer"}
    [connected] = logs.named("kafka_connected")
    assert connected["attempts"] >= 2


async def test_an_agent_process_that_cannot_reach_the_broker_exits_non_zero(
    tmp_path: Path,
) -> None:
    """What a supervisor sees (compose's ``restart``, Kubernetes, the chaos run): an exit
    with an error, never a process that is alive and silent."""
    key_file = tmp_path / "signing-key.pem"
    load_or_create_key(key_file)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SECURITY_ENV and not k.startswith(("KAFKA_", "SPINE_"))
    }
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_refusing_port()}",
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_USERNAME": "agent-sdk-exit",
            "KAFKA_SASL_PASSWORD": "unused",
            "SPINE_KAFKA_STARTUP_TIMEOUT": "2",
            "SPINE_AGENT_SIGNING_KEY_FILE": str(key_file),
            "SPINE_TOPIC_PREFIX": "nobroker.",
        }
    )
    log = tmp_path / "agent.log"
    proc = await spawn(sys.executable, WORKER, "sdk-exit", env=env, log=log, cwd=tmp_path)
    try:
        async with asyncio.timeout(60):
            code = await proc.wait()
    finally:
        await stop(proc)
    text = log.read_text()
    assert code != 0, log_tail(log)
    assert "kafka_unavailable_retrying" in text, log_tail(log)
    assert "kafka_unavailable_giving_up" in text, log_tail(log)
    assert "SPINE_KAFKA_STARTUP_TIMEOUT" in text, log_tail(log)
