"""The operations endpoint of the processes that serve no HTTP API (docs/deploy.md, observability).

The orchestrator, auth, the registry, the relay and the agents serve, on ``SPINE_OPS_PORT``
(bound to ``API_HOST``; 0, the default, serves nothing):

* ``GET /metrics`` — Prometheus text of the process's default registry: the metrics
  below plus prometheus_client's process collectors;
* ``GET /health`` — liveness: 200 while the event loop answers (this server runs on it)
  and Kafka acknowledged a write (a heartbeat, a transaction) within
  :data:`KAFKA_STALE_S`; 503 otherwise;
* ``GET /ready`` — 200 once the process has started (topics ensured, producer up, first
  heartbeat sent; an agent: registered and consuming) and is not stopping, and /health
  holds; 503 otherwise.

A tiny asyncio HTTP/1.1 server: no dependency, one request per connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from spine_contracts import Message

from .logging import get_logger

log = get_logger(__name__)

#: /health fails when Kafka has acknowledged nothing for this long (heartbeats go every 5 s).
KAFKA_STALE_S = 60.0

MESSAGES = Counter(
    "spine_messages_handled_total",
    "Input messages decided and committed, by consumer, topic and message type",
    ["consumer", "topic", "type"],
)
BATCH_DURATION = Histogram(
    "spine_batch_duration_seconds",
    "Time to decide one batch and commit its transaction, by consumer",
    ["consumer"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "spine_batch_size",
    "Input records per transaction, by consumer",
    ["consumer"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
TRANSACTIONS = Counter(
    "spine_transactions_total",
    "Kafka transactions of the consume-decide-produce loop, by consumer and outcome",
    ["consumer", "outcome"],
)
DEAD_LETTERS = Counter(
    "spine_dead_letters_total", "Records sent to the dead-letter topic, by consumer", ["consumer"]
)
SIGNATURE_FAILURES = Counter(
    "spine_signature_failures_total",
    "Agent messages refused because their signature did not check out (dead-lettered), by "
    "consumer and reason: unsigned, unknown_key, wrong_key, bad_signature",
    ["consumer", "reason"],
)
RESETS = Counter(
    "spine_partition_resets_total",
    "Partition (re)starts: producer started, state rebuilt, inputs re-read",
    ["consumer"],
)
AGENT_TASKS = Counter(
    "spine_agent_tasks_total", "Agent tasks answered, by agent and status", ["agent_id", "status"]
)
AGENT_TASK_DURATION = Histogram(
    "spine_agent_task_duration_seconds",
    "Time an agent's handler took for one task",
    ["agent_id"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)

_kafka_ok_at: float | None = None


def kafka_ok() -> None:
    """Kafka acknowledged a write just now (called by heartbeats and committed transactions)."""
    global _kafka_ok_at
    _kafka_ok_at = time.monotonic()


def kafka_age_s() -> float | None:
    return None if _kafka_ok_at is None else time.monotonic() - _kafka_ok_at


def record_unit(
    consumer: str,
    handled: Iterable[tuple[str, Message]],
    records: int,
    dead_letters: int,
    seconds: float,
    committed: bool,
) -> None:
    """Metrics of one transaction of the loop (``handled``: (topic, message) decided)."""
    TRANSACTIONS.labels(consumer, "committed" if committed else "failed").inc()
    BATCH_DURATION.labels(consumer).observe(seconds)
    BATCH_SIZE.labels(consumer).observe(records)
    if committed:
        kafka_ok()
        for (topic, kind), n in Tally((t, m.type) for t, m in handled).items():
            MESSAGES.labels(consumer, topic, kind).inc(n)
        if dead_letters:
            DEAD_LETTERS.labels(consumer).inc(dead_letters)


class OpsServer:
    """``/metrics``, ``/health`` and ``/ready`` on one port (see the module doc)."""

    def __init__(
        self,
        service: str,
        host: str,
        port: int,
        *,
        ready: Callable[[], bool] = lambda: True,
        stale_after_s: float = KAFKA_STALE_S,
    ) -> None:
        self.service = service
        self.host = host
        self.port = port
        self._ready = ready
        self._stale_after_s = stale_after_s
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sockets = self._server.sockets or ()
        if sockets and self.port == 0:
            self.port = int(sockets[0].getsockname()[1])
        log.info("ops_server_started", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def health(self) -> tuple[int, dict[str, Any]]:
        age = kafka_age_s()
        ok = age is not None and age <= self._stale_after_s
        body = {
            "status": "healthy" if ok else "unhealthy",
            "service": self.service,
            "kafka_last_ack_s": None if age is None else round(age, 3),
        }
        return (200 if ok else 503), body

    def readiness(self) -> tuple[int, dict[str, Any]]:
        code, body = self.health()
        ready = code == 200 and self._ready()
        body["status"] = "ready" if ready else "not_ready"
        return (200 if ready else 503), body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            status, ctype, body = self._answer(method, path)
            head = (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        if path in ("/health", "/healthz"):
            code, body = self.health()
        elif path in ("/ready", "/readyz"):
            code, body = self.readiness()
        else:
            return 404, "text/plain", b"not found\n"
        return code, "application/json", orjson.dumps(body)


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
