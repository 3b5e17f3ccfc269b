"""A service process starts, connects, beats, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import uuid

import pytest
from spine_contracts import ServiceHeartbeat, parse, topics
from spine_servicekit.kafka import KafkaConfig, make_consumer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def _next_beat(consumer, instance_id: str, status: str) -> ServiceHeartbeat:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(60):
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    beat = parse(record.value)
                    if (
                        isinstance(beat, ServiceHeartbeat)
                        and beat.data.instance_id == instance_id
                        and beat.data.status == status
                    ):
                        return beat


async def test_skeleton_service_lifecycle(kafka: KafkaConfig, child_env: dict[str, str]) -> None:
    instance = f"metrics-test-{uuid.uuid4().hex[:6]}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**child_env, "SPINE_INSTANCE_ID": instance, "SPINE_HEARTBEAT_INTERVAL": "0.5",
           "SPINE_METRICS_PORT": str(port)}
    consumer = make_consumer(kafka, kafka.topic(topics.SERVICE_HEARTBEATS), group_id=None)
    await consumer.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spine_metrics", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        beat = await _next_beat(consumer, instance, "ok")
        assert beat.data.service == "metrics" and beat.data.pid == proc.pid
        proc.send_signal(signal.SIGTERM)
        await _next_beat(consumer, instance, "stopping")
        async with asyncio.timeout(30):
            code = await proc.wait()
        out = (await proc.stdout.read()).decode()  # type: ignore[union-attr]
        assert code == 0, out
        assert '"event":"service_started"' in out and '"event":"service_stopped"' in out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await consumer.stop()
