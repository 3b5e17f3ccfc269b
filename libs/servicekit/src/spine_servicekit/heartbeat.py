"""Service liveness beats on ``spine.services.heartbeats`` (shown by ``/status``)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from spine_contracts import ServiceHeartbeat, to_bytes, topics, utcnow
from spine_kafka import ops
from spine_kafka.clients import KafkaConfig
from spine_kafka.logging import get_logger

log = get_logger(__name__)


class HeartbeatPublisher:
    """Publishes one beat per interval until stopped; a final beat says ``stopping``."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        cfg: KafkaConfig,
        *,
        service: str,
        instance_id: str,
        interval_s: float = 5.0,
        details: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._producer = producer
        self._topic = cfg.topic(topics.SERVICE_HEARTBEATS)
        self._service = service
        self._instance_id = instance_id
        self._interval = interval_s
        self._details = details or dict
        self._started_at: datetime = utcnow()
        self._task: asyncio.Task[None] | None = None

    async def beat(self, status: str = "ok") -> None:
        message = ServiceHeartbeat.build(
            service=self._service,
            instance_id=self._instance_id,
            started_at=self._started_at,
            host=socket.gethostname(),
            pid=os.getpid(),
            status=status,
            details=self._details(),
        )
        await self._producer.send_and_wait(
            self._topic, to_bytes(message), key=self._instance_id.encode()
        )
        ops.kafka_ok()

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as exc:  # a missed beat is visible in /status; keep beating
                log.warning("heartbeat_failed", error=str(exc))
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"heartbeat-{self._service}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.beat("stopping")
        except Exception as exc:
            log.warning("final_heartbeat_failed", error=str(exc))
