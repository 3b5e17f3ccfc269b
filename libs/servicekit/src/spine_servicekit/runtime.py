"""Process lifecycle shared by every service: signals, logging, a producer, heartbeats.

A service provides ``main(ctx)``; :func:`run_service` runs it until SIGTERM/SIGINT, then
cancels it, stops heartbeats and the producer, and exits 0, so ``make down`` and
Kubernetes see a clean stop.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from spine_kafka import ops, tracing
from spine_kafka.aio import run_loop
from spine_kafka.clients import KafkaConfig, ensure_topics, instance_id, make_producer
from spine_kafka.logging import configure_logging, get_logger

from .heartbeat import HeartbeatPublisher
from .settings import CommonSettings

__all__ = [
    "GRACE_SECONDS",
    "Main",
    "ServiceContext",
    "run_loop",
    "run_service",
    "serve",
]


@dataclass
class ServiceContext:
    service: str
    settings: CommonSettings
    kafka: KafkaConfig
    producer: AIOKafkaProducer
    instance_id: str
    stopping: asyncio.Event
    details: dict[str, Any] = field(default_factory=dict)


GRACE_SECONDS = 15.0

Main = Callable[[ServiceContext], Coroutine[Any, Any, None]]


async def serve(service: str, settings: CommonSettings, main: Main) -> None:
    log = get_logger(service)
    cfg = KafkaConfig.from_settings(settings, client_id=service)
    ident = settings.instance_id or instance_id(service)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    producer = await _connect(cfg, log, stopping, settings.kafka_startup_timeout_s)
    ctx = ServiceContext(service, settings, cfg, producer, ident, stopping)
    beats = HeartbeatPublisher(
        producer,
        cfg,
        service=service,
        instance_id=ident,
        interval_s=settings.heartbeat_interval_s,
        details=lambda: dict(ctx.details),
    )
    await beats.beat()
    beats.start()
    ops_server: ops.OpsServer | None = None
    if settings.ops_port:
        ops_server = ops.OpsServer(
            service, settings.api_host, settings.ops_port, ready=lambda: not stopping.is_set()
        )
        await ops_server.start()
    log.info(
        "service_started",
        instance_id=ident,
        kafka=cfg.bootstrap_servers,
        kafka_security=cfg.security.describe(),
    )
    task = asyncio.create_task(main(ctx), name=f"{service}-main")
    stop_wait = asyncio.create_task(stopping.wait())
    try:
        done, _ = await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # a crashed main is a crashed service: let it raise
    finally:
        log.info("service_stopping")
        stopping.set()
        stop_wait.cancel()
        # main watches ``ctx.stopping`` to drain in-flight work; cancel it only past the grace
        done, _ = await asyncio.wait({task}, timeout=GRACE_SECONDS)
        if not done:
            task.cancel()
        await asyncio.gather(task, stop_wait, return_exceptions=True)
        await beats.stop()
        if ops_server is not None:
            await ops_server.stop()
        await producer.stop()
        log.info("service_stopped")


async def _connect(
    cfg: KafkaConfig, log: Any, stopping: asyncio.Event, timeout_s: float
) -> AIOKafkaProducer:
    """Topics and the producer, retried while the broker is away (a restart, or started
    together with the service): a service started by `make up` has no supervisor to start
    it again, so it waits up to ``SPINE_KAFKA_STARTUP_TIMEOUT`` seconds instead of exiting."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    attempt = 0
    while True:
        attempt += 1
        producer = make_producer(cfg)
        try:
            created = await ensure_topics(cfg)
            if created:
                log.info("topics_created", count=len(created))
            await producer.start()
            return producer
        except (KafkaError, OSError) as exc:
            await producer.stop()
            if time.monotonic() + delay > deadline or stopping.is_set():
                raise
            log.warning(
                "kafka_unavailable_retrying",
                attempt=attempt,
                retry_in_s=delay,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 5.0)


def run_service(service: str, settings: CommonSettings, main: Main) -> None:
    """Entry point helper: configure logging and run ``main`` until a stop signal."""
    configure_logging(service, settings.log_level, console=settings.dev_mode or None)
    tracing.setup(service)
    try:
        run_loop(serve(service, settings, main), settings.event_loop)
    finally:
        tracing.shutdown()  # flush the spans still batched
