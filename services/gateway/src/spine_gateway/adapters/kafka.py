"""Kafka side of the gateway: publish commands, wait for replies, follow heartbeats."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from spine_contracts import GatewayReply, Message, ServiceHeartbeat, to_bytes, topics
from spine_contracts.topics import TopicSpec
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import REPLY_TO_HEADER, KafkaConfig, header, headers_for


class Publisher:
    def __init__(self, cfg: KafkaConfig, producer: AIOKafkaProducer) -> None:
        self._cfg = cfg
        self._producer = producer

    async def publish(
        self, spec: TopicSpec, key: str, message: Message, *, reply_to: str | None = None
    ) -> tuple[TopicPartition, int]:
        """Send, wait for the acknowledgement, return the partition and the next offset
        (what a projector must reach for read-your-writes)."""
        meta = await self._producer.send_and_wait(
            self._cfg.topic(spec),
            to_bytes(message),
            key=key.encode(),
            headers=headers_for(message, reply_to),
        )
        return TopicPartition(meta.topic, meta.partition), meta.offset + 1


class Replies:
    """Futures by request_id, resolved by the replies this replica is sent (reply-to header)."""

    def __init__(self, cfg: KafkaConfig, replica_id: str) -> None:
        self.replica_id = replica_id
        self._waiting: dict[str, asyncio.Future[GatewayReply]] = {}
        self._follower = TopicFollower(
            cfg, cfg.topic(topics.GATEWAY_REPLIES), self._apply, start="end", name="gw-replies"
        )

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    def expect(self, request_id: str) -> asyncio.Future[GatewayReply]:
        fut: asyncio.Future[GatewayReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        return fut

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def _apply(self, message: Message, record: ConsumerRecord[Any, Any]) -> None:
        if header(record, REPLY_TO_HEADER) != self.replica_id:
            return
        if not isinstance(message, GatewayReply):
            return
        fut = self._waiting.pop(message.data.request_id, None)
        if fut is not None and not fut.done():
            fut.set_result(message)


class Heartbeats:
    """The last beat of every service instance, followed in memory."""

    def __init__(self, cfg: KafkaConfig) -> None:
        self.last: dict[str, tuple[ServiceHeartbeat, datetime]] = {}
        self._follower = TopicFollower(
            cfg, cfg.topic(topics.SERVICE_HEARTBEATS), self._apply, name="gw-heartbeats"
        )

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    def _apply(self, message: Message, _record: ConsumerRecord[Any, Any]) -> None:
        if isinstance(message, ServiceHeartbeat):
            self.last[message.data.instance_id] = (message, message.occurred_at)
