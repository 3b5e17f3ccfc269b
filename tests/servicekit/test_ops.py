"""The ops endpoint (spine_servicekit.ops): /metrics, /health, /ready.

In process for the answers and the loop's metrics; then real processes — a service on
``run_service`` and an agent on the SDK — started with ``SPINE_OPS_PORT``, probed the way
Kubernetes does, and stopped.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from spine_contracts import ServiceHeartbeat, utcnow
from spine_servicekit import ops
from spine_servicekit.kafka import KafkaConfig
from support import issue_agent, log_tail, spawn, stop

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest_asyncio.fixture
async def server(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[ops.OpsServer, list[bool]]]:
    monkeypatch.setattr(ops, "_kafka_ok_at", None)
    ready = [False]
    srv = ops.OpsServer("svc", "127.0.0.1", 0, ready=lambda: ready[0], stale_after_s=30)
    await srv.start()
    try:
        yield srv, ready
    finally:
        await srv.stop()


async def test_health_and_ready_follow_kafka_and_start(
    server: tuple[ops.OpsServer, list[bool]],
) -> None:
    srv, ready = server
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}") as http:
        r = await http.get("/health")
        assert r.status_code == 503 and r.json()["kafka_last_ack_s"] is None
        ops.kafka_ok()
        r = await http.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "healthy", r.text
        assert (await http.get("/ready")).status_code == 503  # started, not yet ready
        ready[0] = True
        r = await http.get("/ready")
        assert r.status_code == 200 and r.json() == {
            "status": "ready",
            "service": "svc",
            "kafka_last_ack_s": r.json()["kafka_last_ack_s"],
        }
        ops._kafka_ok_at = ops._kafka_ok_at - 31  # type: ignore[operator]  # Kafka gone quiet
        assert (await http.get("/health")).status_code == 503
        assert (await http.get("/ready")).status_code == 503
        assert (await http.get("/nope")).status_code == 404
        assert (await http.post("/metrics")).status_code == 405


async def test_metrics_of_the_loop(server: tuple[ops.OpsServer, list[bool]]) -> None:
    srv, _ = server
    beat = ServiceHeartbeat.build(
        service="s", instance_id="i", started_at=utcnow(), host="h", pid=1, status="ok"
    )
    consumer = "test-ops-loop"
    ops.record_unit(consumer, [("in", beat), ("in", beat)], 3, 1, 0.02, True)
    ops.record_unit(consumer, [("in", beat)], 1, 0, 0.5, False)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}") as http:
        r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = _samples(r.text)
    c = ("consumer", consumer)
    assert (
        got[("spine_messages_handled_total", frozenset({c, ("topic", "in"), ("type", beat.type)}))]
        == 2
    )
    assert got[("spine_transactions_total", frozenset({c, ("outcome", "committed")}))] == 1
    assert got[("spine_transactions_total", frozenset({c, ("outcome", "failed")}))] == 1
    assert got[("spine_dead_letters_total", frozenset({c}))] == 1
    assert got[("spine_batch_size_sum", frozenset({c}))] == 4
    assert got[("spine_batch_duration_seconds_count", frozenset({c}))] == 2
    assert any(name == "process_cpu_seconds_total" for name, _ in got)


async def _probe_until_ready(port: int, proc: asyncio.subprocess.Process) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        async with asyncio.timeout(90):  # a port has no event to await
            while True:
                assert proc.returncode is None, "the process exited"
                try:
                    r = await http.get("/ready")
                    if r.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        assert (await http.get("/health")).status_code == 200
        return await http.get("/metrics")


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(
    ("command", "metric"),
    [
        ("spine-metrics", "spine_transactions_total"),
        ("spine-agent-echo", "spine_agent_tasks_total"),
    ],
)
async def test_processes_serve_ops(
    kafka: KafkaConfig, child_env: dict[str, str], command: str, metric: str, tmp_path: Path
) -> None:
    port = _free_port()
    if command.startswith("spine-agent-"):  # an agent runs once issued, with its key
        issued = await issue_agent(kafka, command.removeprefix("spine-agent-"))
        child_env = {**child_env, "SPINE_AGENT_SIGNING_KEY_FILE": str(issued.key_file)}
    env = {
        **child_env,
        "SPINE_OPS_PORT": str(port),
        "SPINE_METRICS_PORT": str(_free_port()),
        "SPINE_HEARTBEAT_INTERVAL": "0.5",
        "API_HOST": "127.0.0.1",
    }
    log = tmp_path / "out.log"
    proc = await spawn(BIN / command, env=env, log=log)
    try:
        metrics = await _probe_until_ready(port, proc)
        assert metrics.status_code == 200
        assert f"# TYPE {metric} counter" in metrics.text
    finally:
        code = await stop(proc, within=40)
    assert code == 0, log_tail(log, 2000)
