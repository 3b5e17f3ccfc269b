"""Kafka side of the gateway: publish commands, wait for replies, follow heartbeats, agents'
progress and the metrics summary, record usage, measure consumer-group lag."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import MessageSizeTooLargeError
from spine_contracts import (
    AgentProgress,
    GatewayReply,
    Message,
    MetricsSummaryUpdated,
    ServiceHeartbeat,
    UsageRecorded,
    to_bytes,
    topics,
)
from spine_contracts.signing import check, topic_base
from spine_contracts.topics import TopicSpec
from spine_servicekit import tracing
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import (
    REPLY_TO_HEADER,
    KafkaConfig,
    header,
    headers_for,
    make_admin,
    make_consumer,
)
from spine_servicekit.logging import get_logger

from ..agent_beats import AgentActivity
from ..errors import PayloadTooLarge
from ..limits import check_message_size
from ..liveness import is_live
from ..progress import ProgressHub

log = get_logger(__name__)


class Publisher:
    def __init__(self, cfg: KafkaConfig, producer: AIOKafkaProducer) -> None:
        self._cfg = cfg
        self._producer = producer

    async def publish(
        self,
        spec: TopicSpec,
        key: str,
        message: Message,
        *,
        reply_to: str | None = None,
        what: str | None = None,
        allowance: int = 0,
    ) -> tuple[TopicPartition, int]:
        """Send, wait for the acknowledgement, return the partition and the next offset
        (what a projector must reach for read-your-writes). A message over the size limit
        is refused before anything is sent (413, ``what`` names the caller's payload;
        ``allowance``: more room for what follows it, see ``limits``)."""
        if tracing.ENABLED:  # the command continues the request's trace
            message = tracing.stamp(message)
        value = to_bytes(message)
        what = what or f"{message.type} message"
        check_message_size(value, self._cfg.max_value_bytes, what, allowance)
        try:
            meta = await self._producer.send_and_wait(
                self._cfg.topic(spec),
                value,
                key=key.encode(),
                headers=headers_for(message, reply_to),
            )
        except MessageSizeTooLargeError as exc:  # headers and framing pushed it over
            raise PayloadTooLarge(f"{what} too large for a Kafka message") from exc
        return TopicPartition(meta.topic, meta.partition), meta.offset + 1


class Replies:
    """Futures by request_id, resolved by the replies this replica is sent (reply-to header)."""

    def __init__(self, cfg: KafkaConfig, replica_id: str) -> None:
        self.replica_id = replica_id
        self._waiting: dict[str, asyncio.Future[GatewayReply]] = {}
        # Only gateways read replies, so a poison reply is dead-lettered here, by the
        # replica it was addressed to (an unaddressed one by each, under one message id).
        self._follower = TopicFollower(
            cfg,
            cfg.topic(topics.GATEWAY_REPLIES),
            self._apply,
            start="end",
            name="gw-replies",
            dead_letters=True,
            owns=lambda r: header(r, REPLY_TO_HEADER) in (None, replica_id),
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
        # Only gateways read service beats: poison is dead-lettered here (one id per record).
        self._follower = TopicFollower(
            cfg,
            cfg.topic(topics.SERVICE_HEARTBEATS),
            self._apply,
            name="gw-heartbeats",
            dead_letters=True,
        )

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    def _apply(self, message: Message, _record: ConsumerRecord[Any, Any]) -> None:
        if isinstance(message, ServiceHeartbeat):
            self.last[message.data.instance_id] = (message, message.occurred_at)

    def live(self, now: float, stale_after_s: float) -> list[tuple[ServiceHeartbeat, float]]:
        """The last beat and its age of every instance still running, by instance id. The
        others (silent longer than ``stale_after_s``, or said ``stopping``) are forgotten:
        every restart makes a new instance id, and a dead one stays dead (its next beat, if
        ever, brings it back)."""
        out = []
        for instance, (beat, at) in sorted(self.last.items()):
            age = now - at.timestamp()
            if is_live(beat.data.status, age, stale_after_s):
                out.append((beat, age))
            else:
                del self.last[instance]
        return out


class MetricsSummary:
    """The latest value of every operator metric, from the compacted summary topic."""

    def __init__(self, cfg: KafkaConfig) -> None:
        self.values: dict[str, dict[str, Any]] = {}
        self._follower = TopicFollower(
            cfg,
            cfg.topic(topics.METRICS_SUMMARY),
            self._apply,
            name="gw-metrics-summary",
            dead_letters=True,  # only gateways read the summary
        )

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    def _apply(self, message: Message, _record: ConsumerRecord[Any, Any]) -> None:
        if isinstance(message, MetricsSummaryUpdated):
            d = message.data
            self.values[d.metric] = {
                "value": d.value,
                "labels": dict(d.labels),
                "series": dict(d.series),
                "updated_at": message.occurred_at.isoformat(),
            }

    def value(self, metric: str) -> float | None:
        entry = self.values.get(metric)
        return None if entry is None else entry["value"]


class UsageRecorder:
    """Fire-and-forget ``UsageRecorded`` publishing: ``record`` only appends to a bounded
    buffer; a background task hands what accumulated to the gateway's producer in one go
    (the records of a flush share its batches). A request never waits for Kafka; when the
    buffer is full the oldest records are dropped (and counted) rather than slowing
    requests down."""

    def __init__(
        self, cfg: KafkaConfig, producer: AIOKafkaProducer, *, max_pending: int = 50_000
    ) -> None:
        self._cfg = cfg
        self._topic = cfg.topic(topics.USAGE)
        self._pending: deque[UsageRecorded] = deque(maxlen=max_pending)
        self._wake = asyncio.Event()
        self._producer = producer  # the gateway's, started and stopped by its owner
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gw-usage")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        await self._flush()  # what is still buffered goes out before the producer stops

    def record(self, message: UsageRecorded) -> None:
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
        self._pending.append(message)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        futures: list[asyncio.Future[Any]] = []
        while self._pending:
            message = self._pending.popleft()
            futures.append(
                await self._producer.send(
                    self._topic,
                    to_bytes(message),
                    key=message.data.user_id.encode(),
                    headers=headers_for(message),
                )
            )
        if not futures:
            return
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = sum(isinstance(r, BaseException) for r in results)
        self.sent += len(results) - failed
        if failed:
            self.failed += failed
            log.warning("usage_publish_failed", records=failed)


class ConsumerLag:
    """Committed vs end offsets of this installation's consumer groups, cached briefly.

    A group belongs to the installation when its name starts with the topic prefix and it
    committed offsets on the installation's topics (the prefix plus ``spine.``). Lag is
    ``end - committed`` per partition (the end is the last stable offset; a transaction's
    commit marker counts as one record). A measurement runs as its own task: a caller that
    stops waiting (``/status`` bounds its wait) does not cancel it; later callers get the
    last result at once while a newer one is measured.
    """

    def __init__(self, cfg: KafkaConfig, *, cache_s: float = 5.0) -> None:
        self._cfg = cfg
        self._cache_s = cache_s
        self._clients: tuple[AIOKafkaAdminClient, AIOKafkaConsumer] | None = None
        self._at = -1e9
        self._value: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._clients is not None:
            admin, consumer = self._clients
            self._clients = None
            await consumer.stop()
            await admin.close()

    async def groups(self) -> dict[str, Any]:
        """The last measurement; a stale one starts a new measurement in the background
        (only the very first call waits for one)."""
        fresh = time.monotonic() - self._at <= self._cache_s
        if not fresh and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._refresh(), name="gw-consumer-lag")
        if self._at < 0 and self._task is not None:
            await asyncio.shield(self._task)
        return self._value

    @property
    def age_s(self) -> float | None:
        """Seconds since the last measurement ended (None before the first)."""
        return None if self._at < 0 else round(time.monotonic() - self._at, 3)

    async def _refresh(self) -> None:
        try:
            if self._clients is None:  # connected on first use: /status is rare
                self._clients = await self._connect()
            self._value = await self._measure(*self._clients)
        except Exception as exc:  # shown as the measurement's state; the next call retries
            log.warning("consumer_lag_failed", error=repr(exc))
            self._value = {"error": type(exc).__name__}
        self._at = time.monotonic()

    async def _connect(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        admin = make_admin(self._cfg, client_id=f"{self._cfg.client_id}-lag")
        await admin.start()
        consumer = make_consumer(self._cfg, group_id=None)
        try:
            await consumer.start()
        except BaseException:
            await admin.close()
            raise
        return admin, consumer

    async def _measure(
        self, admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer
    ) -> dict[str, Any]:
        prefix = self._cfg.prefix
        ours = f"{prefix}spine."
        names = [
            str(g[0]) for g in await admin.list_consumer_groups() if str(g[0]).startswith(prefix)
        ]
        fetched = await asyncio.gather(*(admin.list_consumer_group_offsets(name) for name in names))
        committed: dict[str, dict[TopicPartition, int]] = {}
        for name, offsets in zip(names, fetched, strict=True):
            mine = {
                tp: meta.offset
                for tp, meta in offsets.items()
                if tp.topic.startswith(ours) and meta.offset >= 0
            }
            if mine:
                committed[name] = mine
        wanted = sorted({tp for offsets in committed.values() for tp in offsets})
        ends: dict[TopicPartition, int] = await consumer.end_offsets(wanted) if wanted else {}
        out: dict[str, Any] = {}
        for name, offsets in sorted(committed.items()):
            topics_lag: dict[str, int] = {}
            for tp, offset in offsets.items():
                lag = max(0, ends.get(tp, offset) - offset)
                topics_lag[tp.topic] = topics_lag.get(tp.topic, 0) + lag
            out[name] = {
                "lag": sum(topics_lag.values()),
                "partitions": len(offsets),
                "topics": topics_lag,
            }
        return out


class AgentBeats:
    """:class:`AgentActivity`, fed by two followers: the catalogue (compacted), the beats."""

    def __init__(self, cfg: KafkaConfig, stale_after_s: float) -> None:
        self.activity = AgentActivity(stale_after_s)
        self._prefix = cfg.prefix
        self._catalogue = TopicFollower(
            cfg, cfg.topic(topics.REGISTRY_EVENTS), self._entry, name="gw-agent-catalogue"
        )
        self._beats = TopicFollower(
            cfg, cfg.topic(topics.REGISTRY_HEARTBEATS), self._beat, name="gw-agent-beats"
        )

    async def start(self) -> None:
        await self._catalogue.start()
        await self._beats.start()

    async def stop(self) -> None:
        await self._beats.stop()
        await self._catalogue.stop()

    def _entry(self, message: Message, _record: ConsumerRecord[Any, Any]) -> None:
        self.activity.catalogue(message)

    def _beat(self, message: Message, record: ConsumerRecord[Any, Any]) -> None:
        self.activity.beat(
            message,
            list(record.headers or ()),
            topic_base(record.topic, self._prefix),
            record.key,
            record.value or b"",
        )


class AgentProgressFeed:
    """Follows the progress topic from its end (live only: nothing before this replica's
    start matters, so no group and no committed offset) and offers each message to the
    hub, verifying its signature against the key the agent catalogue holds — the same
    knowledge :class:`AgentBeats` verifies heartbeats with."""

    def __init__(self, cfg: KafkaConfig, hub: ProgressHub, activity: AgentActivity) -> None:
        self._hub = hub
        self._activity = activity
        self._prefix = cfg.prefix
        # every agent may write this topic: garbage is logged and skipped, never dead-
        # lettered (each replica would copy it to the dead letters, and it is worthless)
        self._follower = TopicFollower(
            cfg, cfg.topic(topics.AGENT_PROGRESS), self._apply, start="end", name="gw-progress"
        )

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    def _apply(self, message: Message, record: ConsumerRecord[Any, Any]) -> None:
        if not isinstance(message, AgentProgress) or not self._hub.watched(
            message.data.execution_id
        ):
            return
        headers = list(record.headers or ())
        base = topic_base(record.topic, self._prefix)
        value = record.value or b""

        def verified(agent_id: str) -> bool:
            key = self._activity.signer_key(agent_id)
            return check(headers, base, record.key, value, key) is None

        self._hub.offer(message, verified)
