"""Kafka client set-up shared by every service and agent: tuned factories, topic admin, headers.

Consumers keep aiokafka's 500 ms ``fetch_max_wait_ms``: with ``fetch_min_bytes=1`` the
broker answers a waiting fetch as soon as data arrives, so the bound costs no latency, while
a small one makes every idle consumer send a fetch per bound, which keeps the CPU busy for
nothing (see docs/operations.md). Producers are idempotent with
``acks=all``; readers use ``read_committed`` because the orchestrator and auth write
in transactions.

Every aiokafka client of the project is built here (``make_producer``, ``make_consumer``,
``make_admin``), with the security of its :class:`KafkaConfig` — a required field, so no
client connects from ``bootstrap_servers`` alone (``tests/servicekit/test_kafka_client_guard.py``
fails on a client built anywhere else). The benchmark's frozen floor, bare aiokafka by
design, passes the same :meth:`KafkaSecurity.client_kwargs` itself.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import socket
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError
from aiokafka.partitioner import DefaultPartitioner, murmur2
from spine_contracts import DeadLetter, Message, parse, to_bytes, topics, utcnow
from spine_contracts.errors import InvalidMessage, UndecodableMessage
from spine_contracts.signing import Signer, topic_base
from spine_contracts.topics import TopicSpec

from . import limits
from .security import KafkaSecurity
from .settings import KafkaSettings

_DEFAULT_PARTITIONER = DefaultPartitioner()

#: Namespace of the deterministic dead-letter ids (see :func:`dead_letter_id`).
DEAD_LETTER_IDS = uuid.UUID("8f0c3c52-5a4e-4b8f-9d55-6c3b1f0e7a21")

REPLY_TO_HEADER = "reply-to"
TRACEPARENT_HEADER = "traceparent"
#: ``fetch_max_wait_ms`` of :meth:`KafkaConfig.background` consumers
BACKGROUND_FETCH_WAIT_MS = 250
#: ``fetch_min_bytes`` of :meth:`KafkaConfig.batched` consumers
BATCHED_FETCH_MIN_BYTES = 1 << 20
MESSAGE_TYPE_HEADER = "message-type"
#: ``SPINE_KAFKA_MAX_MESSAGE_BYTES`` unless set (:mod:`spine_kafka.limits`)
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
#: a producer's batch of small records, at most (never more than one record may be)
MAX_BATCH_BYTES = 256 * 1024

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str
    prefix: str = ""
    partitions: int = 2
    replication: int = 1
    min_isr: int = 1
    fetch_max_wait_ms: int = 500
    fetch_min_bytes: int = 1
    linger_ms: int = 0
    client_id: str = "spine"
    #: the largest record a producer sends (``max_request_size``); the broker's
    #: ``message.max.bytes`` (default 1048588) must allow it (:mod:`spine_kafka.limits`)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: consumer group timing (``SPINE_KAFKA_SESSION_TIMEOUT_MS`` and its siblings): how
    #: soon a dead member's partitions move (docs/operations.md, "Consumer groups")
    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_000
    rebalance_timeout_ms: int = 10_000
    #: how every client built from this config logs in; required, so that choosing
    #: PLAINTEXT is a decision (``KafkaSecurity()``), never an omission
    security: KafkaSecurity = field(kw_only=True)

    @classmethod
    def from_settings(cls, settings: KafkaSettings, client_id: str = "spine") -> KafkaConfig:
        return cls(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            prefix=settings.topic_prefix,
            partitions=settings.topic_partitions,
            replication=settings.topic_replication,
            min_isr=settings.topic_min_isr,
            fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
            linger_ms=settings.kafka_linger_ms,
            client_id=client_id,
            max_message_bytes=settings.kafka_max_message_bytes,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
            rebalance_timeout_ms=settings.kafka_rebalance_timeout_ms,
            security=settings.kafka_security,
        )

    @property
    def max_value_bytes(self) -> int:
        """The largest encoded message that fits in one record (:mod:`spine_kafka.limits`)."""
        return limits.max_value_bytes(self.max_message_bytes)

    def topic(self, spec: TopicSpec) -> str:
        return spec.name(self.prefix)

    def background(self) -> KafkaConfig:
        """The settings for a consumer no request waits on (catalogues, projections,
        metrics): at least a 250 ms broker wait even where SPINE_KAFKA_FETCH_MAX_WAIT_MS
        is set lower for the request path."""
        wait = max(self.fetch_max_wait_ms, BACKGROUND_FETCH_WAIT_MS)
        return dataclasses.replace(self, fetch_max_wait_ms=wait)

    def batched(self) -> KafkaConfig:
        """For a consumer only dashboards read (metrics): the broker holds each fetch for
        the background wait unless a MiB is waiting, so a quiet stream costs ~4 fetches a
        second, not one fetch (and one wake-up) per transaction it carries."""
        return dataclasses.replace(self.background(), fetch_min_bytes=BATCHED_FETCH_MIN_BYTES)

    def agent_tasks(self, agent_id: str) -> str:
        return topics.agent_tasks(agent_id, self.prefix)


def instance_id(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@functools.lru_cache(maxsize=16_384)
def _murmur2(key: bytes) -> int:
    hashed: int = murmur2(key)
    return hashed & 0x7FFFFFFF


def key_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's default partitioner (Java's murmur2, so every client agrees on where a key
    lives) with the hash cached: an execution's id is hashed for each of its ~20 records, and
    aiokafka's murmur2 is pure Python."""
    if key is None:
        return _DEFAULT_PARTITIONER(key, all_partitions, available)  # type: ignore[no-any-return]
    return all_partitions[_murmur2(key) % len(all_partitions)]


def make_producer(
    cfg: KafkaConfig, *, transactional_id: str | None = None, **overrides: Any
) -> AIOKafkaProducer:
    """An idempotent producer with ``acks=all``; transactional when given an id."""
    options: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "client_id": cfg.client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": cfg.linger_ms,
        "max_batch_size": min(MAX_BATCH_BYTES, cfg.max_message_bytes),
        "max_request_size": cfg.max_message_bytes,
        "request_timeout_ms": 30_000,
        "partitioner": key_partitioner,
    }
    if transactional_id is not None:
        options["transactional_id"] = transactional_id
        options["transaction_timeout_ms"] = 60_000
    options.update(overrides)
    return AIOKafkaProducer(**options, **cfg.security.client_kwargs())


def make_consumer(
    cfg: KafkaConfig, *topic_names: str, group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    """A low-latency ``read_committed`` consumer that never commits on its own.

    The range assignor keeps partition *p* of co-partitioned topics on one member. Group
    membership is dynamic (no ``group_instance_id``): a member that stops cleanly sends
    LeaveGroup and its partitions move at once; only a dead one waits out the session
    timeout (docs/operations.md, "Consumer groups").
    """
    options: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "client_id": cfg.client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "fetch_max_wait_ms": cfg.fetch_max_wait_ms,
        "fetch_min_bytes": cfg.fetch_min_bytes,
        "max_poll_records": 500,
        "partition_assignment_strategy": (RangePartitionAssignor,),
        "session_timeout_ms": cfg.session_timeout_ms,
        "heartbeat_interval_ms": cfg.heartbeat_interval_ms,
        "rebalance_timeout_ms": cfg.rebalance_timeout_ms,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topic_names, **options, **cfg.security.client_kwargs())


def make_admin(cfg: KafkaConfig, *, client_id: str | None = None) -> AIOKafkaAdminClient:
    """An admin client (topics, metadata, group offsets); ``start()`` and ``close()`` it."""
    return AIOKafkaAdminClient(
        bootstrap_servers=cfg.bootstrap_servers,
        client_id=client_id or cfg.client_id,
        **cfg.security.client_kwargs(),
    )


def new_topic(cfg: KafkaConfig, spec: TopicSpec, name: str | None = None) -> NewTopic:
    config = spec.kafka_config()
    config["min.insync.replicas"] = str(cfg.min_isr)
    return NewTopic(
        name=name or cfg.topic(spec),
        num_partitions=spec.partitions or cfg.partitions,
        replication_factor=cfg.replication,
        topic_configs=config,
    )


async def ensure_topics(
    cfg: KafkaConfig,
    specs: Iterable[TopicSpec] = topics.STATIC,
    agent_ids: Iterable[str] = (),
) -> list[str]:
    """Create missing topics from the registry; return the names that were created."""
    wanted = [new_topic(cfg, spec) for spec in specs]
    wanted += [new_topic(cfg, topics.AGENT_TASKS, cfg.agent_tasks(a)) for a in agent_ids]
    admin = make_admin(cfg)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        created: list[str] = []
        if missing:
            response = await admin.create_topics(missing, timeout_ms=30_000)
            for name, code, *rest in response.topic_errors:
                if code == 0:
                    created.append(name)
                elif code != TopicAlreadyExistsError.errno:
                    raise KafkaError(f"cannot create topic {name}: error {code} {rest}")
        await _wait_visible(admin, {t.name: t.num_partitions for t in wanted})
        return created
    finally:
        await admin.close()


async def _wait_visible(admin: AIOKafkaAdminClient, partitions: dict[str, int]) -> None:
    """Creation returns before every broker's metadata shows the topic; wait for that."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        described = await admin.describe_topics(list(partitions))
        ready = {
            t["topic"]
            for t in described
            if t["error_code"] == 0 and len(t["partitions"]) == partitions[t["topic"]]
        }
        if ready == set(partitions):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise KafkaError(f"topics not visible after 30 s: {sorted(set(partitions) - ready)}")
        await asyncio.sleep(0.1)


async def delete_topics_with_prefix(cfg: KafkaConfig, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix`` (test clean-up)."""
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = make_admin(cfg)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if doomed:
            try:
                await admin.delete_topics(doomed)
            except UnknownTopicOrPartitionError:
                pass
        return doomed
    finally:
        await admin.close()


def headers_for(message: Message, reply_to: str | None = None) -> Headers:
    headers: Headers = [(MESSAGE_TYPE_HEADER, message.type.encode())]
    if message.trace:
        headers.append((TRACEPARENT_HEADER, message.trace.encode()))
    if reply_to:
        headers.append((REPLY_TO_HEADER, reply_to.encode()))
    return headers


def header(record: ConsumerRecord[Any, Any], name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value).decode()
    return None


def record_key(record: ConsumerRecord[Any, Any]) -> str | None:
    """The record's key as text (keys are ids; undecodable bytes are replaced, not fatal)."""
    key = record.key
    return bytes(key).decode(errors="replace") if key is not None else None


def problem_fields(record: ConsumerRecord[Any, Any], error: BaseException) -> dict[str, Any]:
    """The log fields of a record that could not be used: its origin and the error."""
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "error_type": type(error).__name__,
        "error": str(error)[:500],
    }


def decode_record(record: ConsumerRecord[Any, Any], prefix: str = "") -> Message:
    """Decode a record and check that its type belongs on its topic (the registry's list).

    Raises a :class:`~spine_contracts.ContractError`: ``UndecodableMessage`` for no value or
    bytes that are not a message, ``InvalidMessage`` for a valid message of a type its
    topic does not carry (a misrouted or forged record is as unhandleable as garbage).
    Topics outside the registry (tests' ad-hoc names) are only decoded.
    """
    if record.value is None:
        raise UndecodableMessage("record has no value")
    message = parse(record.value)
    try:
        spec = topics.spec_for(record.topic, prefix)
    except KeyError:
        return message
    if spec.messages and not isinstance(message, spec.messages):
        raise InvalidMessage(f"{message.type!r} does not belong on {spec.base}")
    return message


def dead_letter_id(consumer: str, topic: str, partition: int, offset: int) -> uuid.UUID:
    """The ``message_id`` of the dead letter of one record by one consumer.

    Deterministic, so a dead letter sent again (a consumer that replays after a crash, or
    every replica of a group-less follower) is recognisable as the same one.
    """
    return uuid.uuid5(DEAD_LETTER_IDS, f"{consumer}|{topic}|{partition}|{offset}")


def dead_letter(
    record: ConsumerRecord[Any, Any],
    error: BaseException,
    consumer: str,
    *,
    max_bytes: int = limits.max_value_bytes(DEFAULT_MAX_MESSAGE_BYTES),
) -> DeadLetter:
    """Describe an unhandleable record so it can be inspected and replayed later.

    Its ``message_id`` is :func:`dead_letter_id` of the consumer and the record's origin.
    A payload whose letter would exceed ``max_bytes`` (base64 grows it by a third) is left
    out, and the error says so: the origin still finds it, and the letter can be sent.
    """
    key = record.key
    return _dead_letter(
        record.topic,
        record.partition,
        record.offset,
        bytes(key).decode(errors="replace") if key is not None else None,
        record.value or b"",
        error,
        consumer,
        max_bytes,
    )


def dead_letter_of(
    incoming: Incoming,
    error: BaseException,
    consumer: str,
    *,
    max_bytes: int = limits.max_value_bytes(DEFAULT_MAX_MESSAGE_BYTES),
) -> DeadLetter:
    """:func:`dead_letter` of a record a handler refuses after decoding it (a signature
    that does not check out): the same origin, payload and deterministic id."""
    return _dead_letter(
        incoming.topic,
        incoming.partition,
        incoming.offset,
        incoming.key,
        incoming.value,
        error,
        consumer,
        max_bytes,
    )


def _dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: str | None,
    raw: bytes,
    error: BaseException,
    consumer: str,
    max_bytes: int,
) -> DeadLetter:
    fields: dict[str, Any] = {
        "origin_topic": topic,
        "origin_partition": partition,
        "origin_offset": offset,
        "origin_key": key,
        "payload_b64": base64.b64encode(raw).decode(),
        "error_type": type(error).__name__,
        "error": str(error)[:4000],
        "consumer": consumer,
        "failed_at": utcnow(),
    }
    letter = DeadLetter.build(**fields)
    if len(fields["payload_b64"]) > max_bytes // 2 and len(to_bytes(letter)) > max_bytes:
        fields["payload_b64"] = ""
        fields["error"] += f" [payload of {len(raw):,} bytes left out: too large for a dead letter]"
        letter = DeadLetter.build(**fields)
    letter_id = dead_letter_id(consumer, topic, partition, offset)
    return letter.model_copy(update={"message_id": letter_id})


def dead_letter_outgoing(cfg: KafkaConfig, letter: DeadLetter) -> Outgoing:
    """Where a dead letter goes: the dead-letter topic, keyed by the original key."""
    data = letter.data
    key = data.origin_key or f"{data.origin_topic}/{data.origin_partition}"
    return Outgoing(topic=cfg.topic(topics.DEADLETTER), key=key, message=letter)


@dataclass(frozen=True)
class Outgoing:
    """A message to produce: where, with which key, and optional routing headers.

    Its encoding is made once (:attr:`value`), so a size check before a transaction and
    the send share it; ``dataclasses.replace`` (a re-stamped message) starts afresh.
    """

    topic: str
    key: str
    message: Message
    reply_to: str | None = None

    def with_value(self, value: bytes) -> Outgoing:
        """This record with its message's encoding made already (``value`` must be
        ``to_bytes(self.message)``): kept as :attr:`value`, as if it had been read."""
        self.__dict__["value"] = value  # where cached_property keeps it
        return self

    @cached_property
    def value(self) -> bytes:
        """The message's JSON, as it is sent."""
        return to_bytes(self.message)

    def encode(self) -> tuple[bytes, bytes, Headers]:
        return self.key.encode(), self.value, headers_for(self.message, self.reply_to)

    def size(self) -> int:
        """The record's size as the producer counts it (:func:`spine_kafka.limits.record_size`)."""
        key, value, headers = self.encode()
        return limits.record_size(key, value, headers)

    def fits(self, max_message_bytes: int) -> bool:
        """Whether the producer takes this record (:meth:`size`, counted only when close)."""
        key, value, headers = self.encode()
        if limits.record_size_bound(key, value, headers) <= max_message_bytes:
            return True
        return limits.record_size(key, value, headers) <= max_message_bytes

    def encode_signed(self, signer: Signer | None, prefix: str) -> tuple[bytes, bytes, Headers]:
        """:meth:`encode`, with the signature headers of ``signer`` over the record
        (:mod:`spine_contracts.signing`: its value, key and topic without ``prefix``)."""
        key, value, headers = self.encode()
        if signer is not None:
            headers += signer.headers(topic_base(self.topic, prefix), key, value)
        return key, value, headers


@dataclass(frozen=True)
class Incoming:
    """One decoded record, with where it came from: the input of a transactional loop's
    handler and of a projection's ``apply``."""

    topic: str
    partition: int
    offset: int
    key: str | None
    timestamp_ms: int
    message: Message
    #: only the transactional loop keeps them (for ``reply_to`` and signatures) and the
    #: value bytes (a signature covers them); projections need neither
    headers: tuple[tuple[str, bytes], ...] = ()
    value: bytes = b""

    @classmethod
    def of(
        cls, record: ConsumerRecord[Any, Any], message: Message, *, headers: bool = False
    ) -> Incoming:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record_key(record),
            timestamp_ms=record.timestamp,
            message=message,
            headers=tuple((n, bytes(v)) for n, v in record.headers or ()) if headers else (),
            value=bytes(record.value or b"") if headers else b"",
        )

    @property
    def reply_to(self) -> str | None:
        for name, value in self.headers:
            if name == REPLY_TO_HEADER:
                return bytes(value).decode()
        return None


async def send_all(producer: AIOKafkaProducer, outgoing: Sequence[Outgoing]) -> None:
    """Send a batch and wait for every acknowledgement (batching, not one round trip each)."""
    futures = []
    for item in outgoing:
        key, value, hdrs = item.encode()
        futures.append(await producer.send(item.topic, value=value, key=key, headers=hdrs))
    for fut in futures:
        await fut


async def read_partition(
    cfg: KafkaConfig, topic: str, partition: int, *, batch: int = 2000
) -> AsyncIterator[list[ConsumerRecord[Any, Any]]]:
    """Yield the committed records of one partition from the beginning to its current end.

    Used to rebuild state (snapshots, catalogues) before a service starts deciding.
    """
    consumer = make_consumer(cfg, group_id=None, max_poll_records=batch)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        while await consumer.position(tp) < end:
            records = (await consumer.getmany(tp, timeout_ms=200)).get(tp, [])
            if records:
                yield records
    finally:
        await consumer.stop()


async def partitions_of(cfg: KafkaConfig, topic: str) -> list[int]:
    """Partition numbers of an existing topic, from a fresh metadata request.

    (aiokafka's ``consumer.topics()`` refreshes a copy of the metadata that
    ``partitions_for_topic`` does not read, so a just-created topic can look missing.)
    """
    admin = make_admin(cfg)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        if described["error_code"] != 0:
            raise UnknownTopicOrPartitionError(f"topic {topic} does not exist")
        return sorted(p["partition"] for p in described["partitions"])
    finally:
        await admin.close()
