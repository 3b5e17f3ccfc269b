"""A service process starts, connects, beats, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import uuid

import pytest
from spine_contracts import ServiceHeartbeat, topics
from spine_servicekit.kafka import KafkaConfig
from support import TopicTail, forward, spawn, stop

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def _next_beat(beats: TopicTail, instance_id: str, status: str) -> ServiceHeartbeat:
    def found() -> list[ServiceHeartbeat]:
        return [
            m
            for m in beats.of(ServiceHeartbeat, instance_id=instance_id)
            if m.data.status == status
        ]

    await beats.until(lambda _t: bool(found()), within=60)
    return found()[0]


async def test_skeleton_service_lifecycle(kafka: KafkaConfig, child_env: dict[str, str]) -> None:
    instance = f"metrics-test-{uuid.uuid4().hex[:6]}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **child_env,
        "SPINE_INSTANCE_ID": instance,
        "SPINE_HEARTBEAT_INTERVAL": "0.5",
        "SPINE_METRICS_PORT": str(port),
    }
    async with TopicTail(kafka, topics.SERVICE_HEARTBEATS) as beats:
        proc = await spawn(
            sys.executable,
            "-m",
            "spine_metrics",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            beat = await _next_beat(beats, instance, "ok")
            assert beat.data.service == "metrics" and beat.data.pid == proc.pid
            proc.send_signal(signal.SIGTERM)
            await _next_beat(beats, instance, "stopping")
            async with asyncio.timeout(30):
                code = await proc.wait()
            out = (await proc.stdout.read()).decode()  # type: ignore[union-attr]
            assert code == 0, out
            assert '"event":"service_started"' in out and '"event":"service_stopped"' in out
        finally:
            await stop(proc, sig=signal.SIGKILL)  # gone already, unless an assertion failed


class _RecordingLog:
    def __init__(self) -> None:
        self.warnings: list[dict[str, object]] = []
        self.retried = asyncio.Event()

    def warning(self, event: str, **fields: object) -> None:
        self.warnings.append({"event": event, **fields})
        self.retried.set()

    def info(self, event: str, **fields: object) -> None:
        pass


async def test_a_service_waits_for_a_broker_that_comes_later(kafka: KafkaConfig) -> None:
    """Started before the broker answers, the runtime retries instead of exiting; once the
    broker is there (here: a TCP forwarder opened on the bootstrap port) it connects."""
    from dataclasses import replace

    from spine_servicekit.runtime import _connect

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    host, _, real_port = kafka.bootstrap_servers.split(",")[0].rpartition(":")
    cfg = replace(kafka, bootstrap_servers=f"127.0.0.1:{port}")
    log = _RecordingLog()
    connecting = asyncio.create_task(_connect(cfg, log, asyncio.Event(), timeout_s=60))
    async with asyncio.timeout(30):
        await log.retried.wait()  # nothing listens yet: it said so and waits
    assert not connecting.done()
    assert log.warnings[0]["event"] == "kafka_unavailable_retrying"

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(host or "127.0.0.1", int(real_port))
        await asyncio.gather(forward(r, uw), forward(ur, w))

    server = await asyncio.start_server(pipe, "127.0.0.1", port)
    try:
        async with asyncio.timeout(60):
            producer = await connecting
        await producer.stop()
    finally:
        server.close()


async def test_a_broker_that_never_comes_fails_the_start_after_the_timeout(
    kafka: KafkaConfig,
) -> None:
    from dataclasses import replace

    from aiokafka.errors import KafkaError
    from spine_servicekit.runtime import _connect

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = _RecordingLog()
    cfg = replace(kafka, bootstrap_servers=f"127.0.0.1:{port}")
    with pytest.raises((KafkaError, OSError)):
        async with asyncio.timeout(60):
            await _connect(cfg, log, asyncio.Event(), timeout_s=2)
    assert log.warnings, "it retried before giving up"
