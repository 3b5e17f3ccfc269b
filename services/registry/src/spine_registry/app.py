"""Wiring of the registry: commands, the operator's commands and heartbeats in, whole
catalogue entries out.

One consumer group over the co-partitioned commands, admin commands (``spine-admin``'s
``IssueAgent``/``RevokeAgentKey``) and heartbeats (key agent_id), so one replica decides
for an agent; within a partition the three topics are decided in record-time order, so
the key an agent was issued is known when its first signed registration arrives.
What a batch of one partition causes — entries, audit
records, answers to the gateway, dead letters — is produced in one Kafka transaction
(:mod:`.producers`: one transactional producer per owned partition), and the offsets are
committed after it (at least once); a command read again is recognised by its
``message_id`` among the entries' causes (:class:`~spine_registry.domain.Catalog`), and
entries are whole state on a compacted topic, so nothing is applied twice. A replica
decides on the entries of the agents of the partitions it owns, reloaded from the log
whenever it takes them.

Refusals: a registration the catalogue does not accept (an ``agent_type`` that is no node
type, an endpoint that is not ``http``/``https``, or whose host already resolves to an
address the relay refuses, see :mod:`.addresses`; an agent id of another owner) and a
deregistration by someone who does not own the agent change nothing; they are logged as
``registry_registration_refused`` with the reason and dead-lettered with it. A gateway's
command (one with a ``request_id``) is also audited and answered on
``spine.gateway.replies`` (to its ``reply-to`` header) with the refusal's code, and an
accepted one with the entry, so the gateway can answer 201/409/403/422 rather than 202.

Signatures (:mod:`.authenticity`): an agent's own registration and every heartbeat must
carry the signature of the key in the agent's entry (the relay's for an HTTP agent); one
that does not — unsigned, unknown key, another key, bad signature — changes nothing, is
logged as ``registry_signature_refused``, counted in
``spine_signature_failures_total{consumer="registry",reason}`` and dead-lettered.

Poison: a record that does not decode, whose type its topic does not carry, that sits on
another partition than its agent id's, or that the catalogue cannot decide goes to the
dead-letter topic (deterministic ``message_id``, so a replay after a crash sends the same
letter) and the loop goes on.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from spine_contracts import (
    AgentDeregistered,
    AgentRegistered,
    AgentStatusChanged,
    ContractError,
    DeregisterAgent,
    IssueAgent,
    Message,
    RegisterAgent,
    RevokeAgentKey,
    topics,
    utcnow,
)
from spine_contracts.signing import SignatureRefused, topic_base
from spine_kafka import ops
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import (
    REPLY_TO_HEADER,
    KafkaConfig,
    Outgoing,
    dead_letter,
    dead_letter_outgoing,
    decode_record,
    ensure_topics,
    header,
    key_partitioner,
    make_consumer,
    partitions_of,
    problem_fields,
    read_partition,
)
from spine_servicekit.logging import get_logger
from spine_servicekit.projector import Projector
from spine_servicekit.runtime import ServiceContext

from .addresses import endpoint_refusal
from .authenticity import RelayKey, misrouted, verify
from .domain import (
    Catalog,
    Entry,
    Outcome,
    accepted,
    agent_of,
    answered_again,
    check_registration,
    refused,
)
from .errors import RegistrationRefused
from .producers import PartitionProducers
from .projection import PROJECTION
from .settings import RegistrySettings

log = get_logger(__name__)


def partition_for(agent_id: str, count: int) -> int:
    """The partition Kafka's default partitioner gives ``agent_id`` among ``count``."""
    every = list(range(count))
    return key_partitioner(agent_id.encode(), every, every)


class Registry:
    """Decides the records of the partitions it owns and sweeps their agents' liveness."""

    def __init__(
        self,
        cfg: KafkaConfig,
        settings: RegistrySettings,
        partitions: int,
        relay_key: RelayKey | None = None,
    ) -> None:
        self._cfg = cfg
        self._settings = settings
        self._partitions = partitions
        self.catalog = Catalog()
        self.relay_key = relay_key or RelayKey()
        self._commands = cfg.topic(topics.REGISTRY_COMMANDS)
        self._requests = cfg.topic(topics.REGISTRY_REQUESTS)
        self._admin = cfg.topic(topics.REGISTRY_ADMIN)
        self._heartbeats = cfg.topic(topics.REGISTRY_HEARTBEATS)
        #: within a partition, on equal record times: the operator's commands first
        self._rank = {self._admin: 0, self._requests: 1, self._commands: 2, self._heartbeats: 3}
        self._events = cfg.topic(topics.REGISTRY_EVENTS)
        self._audit = cfg.topic(topics.AUDIT)
        self._replies = cfg.topic(topics.GATEWAY_REPLIES)
        self.consumer = make_consumer(
            cfg, group_id=f"{cfg.prefix}registry", isolation_level="read_uncommitted"
        )
        self.producers = PartitionProducers(cfg, self.consumer, self.reload)

    def partition_of(self, agent_id: str) -> int:
        return partition_for(agent_id, self._partitions)

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.subscribe(
            [self._admin, self._requests, self._commands, self._heartbeats],
            listener=self.producers,
        )

    async def stop(self) -> None:
        await self.producers.stop()
        await self.consumer.stop()

    # -- state -----------------------------------------------------------------------------

    async def reload(self, partitions: set[int]) -> None:
        """The entries of these partitions' agents, as the log has them now."""

        def owned(agent_id: str) -> bool:
            return self.partition_of(agent_id) in partitions

        self.catalog.forget(owned)
        now = utcnow()
        loaded = 0
        for p in await partitions_of(self._cfg, self._events):
            async for records in read_partition(self._cfg, self._events, p):
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        entry = decode_record(record, self._cfg.prefix)
                    except ContractError as exc:  # the registry's projector dead-letters it
                        log.error("registry_entry_skipped", **problem_fields(record, exc))
                        continue
                    if isinstance(entry, AgentRegistered | AgentStatusChanged | AgentDeregistered):
                        if owned(entry.data.agent.agent_id):
                            self.catalog.load(entry, now)
                            loaded += 1
        log.info("catalog_loaded", partitions=sorted(partitions), entries=loaded)

    # -- one poll --------------------------------------------------------------------------

    async def process(self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        """Decide each ready partition's records, one transaction each, then commit them."""
        async with self.producers.lock:
            ready = self.producers.ready
            per_topic: dict[int, list[list[ConsumerRecord[Any, Any]]]] = defaultdict(list)
            for tp, records in batches.items():
                if tp.partition in ready:  # else it is being reset: read again after that
                    per_topic[tp.partition].append(records)
            offsets: dict[TopicPartition, int] = {}
            for p, lists in per_topic.items():
                # each topic in offset order, the topics interleaved by record time
                records = list(
                    heapq.merge(*lists, key=lambda r: (r.timestamp, self._rank.get(r.topic, 3)))
                )
                out: list[Outgoing] = []
                for record in records:
                    out += await self._handle(p, record)
                if out and not await self.producers.transact(p, out):
                    continue
                _log_changes(out)
                for r in records:
                    tp = TopicPartition(r.topic, r.partition)
                    offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
            if offsets:
                try:
                    await self.consumer.commit(offsets)
                except KafkaError as exc:  # a rebalance: the next owner reads them again
                    log.warning("registry_commit_failed", error_type=type(exc).__name__)

    async def top_up(
        self, batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> dict[TopicPartition, list[ConsumerRecord[Any, Any]]]:
        """Add what is already fetched for the other topics of the partitions in
        ``batches``: aiokafka's getmany drains one partition's buffer before the next, and
        an agent's issued key (admin topic) must be decided before its registration."""
        numbers = {tp.partition for tp in batches}
        rest = [
            tp for tp in self.consumer.assignment() if tp.partition in numbers and tp not in batches
        ]
        if rest:
            more = await self.consumer.getmany(*rest, timeout_ms=0, max_records=500)
            batches.update(more)
        return batches

    async def sweep(self) -> None:
        """Mark inactive the owned agents whose beats stopped, one transaction per partition."""
        ttl = timedelta(seconds=self._settings.heartbeat_ttl_s)
        async with self.producers.lock:
            ready = self.producers.ready
            entries = self.catalog.sweep(
                utcnow(), ttl, owned=lambda a: self.partition_of(a) in ready
            )
            by_partition: dict[int, list[Outgoing]] = defaultdict(list)
            for entry in entries:
                agent_id = entry.data.agent.agent_id
                by_partition[self.partition_of(agent_id)].append(
                    Outgoing(self._events, agent_id, entry)
                )
            for p, out in by_partition.items():
                if await self.producers.transact(p, out):
                    _log_changes(out)

    # -- one record ------------------------------------------------------------------------

    async def _handle(self, partition: int, record: ConsumerRecord[Any, Any]) -> list[Outgoing]:
        try:
            message: Message = decode_record(record, self._cfg.prefix)
        except ContractError as exc:
            return [self._reject(record, exc)]
        if not isinstance(message, RegisterAgent | DeregisterAgent | IssueAgent | RevokeAgentKey):
            try:
                self._verify(record, message)
            except SignatureRefused as exc:
                return [self._refuse_signature(record, message, exc)]
            try:
                return self._entries(self.catalog.decide(message, utcnow()))
            except Exception as exc:  # the catalogue cannot take it: a dead letter, not a loop
                return [self._reject(record, exc)]
        agent_id = agent_of(message)
        reply_to = header(record, REPLY_TO_HEADER)
        misrouted = self._misrouted(record.topic, message)
        if misrouted is not None:
            return [self._reject(record, RegistrationRefused(misrouted))]
        if self.partition_of(agent_id) != partition:
            # its agent's entries are decided where its partition is owned, maybe elsewhere
            why = f"{message.type} for {agent_id!r} on partition {partition}, not its own"
            return [self._reject(record, RegistrationRefused(why))]
        if self.catalog.is_duplicate(message):
            log.info("registry_duplicate_skipped", message_id=str(message.message_id))
            again = answered_again(message, self.catalog.agents.get(agent_id))
            return self._outcome(agent_id, again, reply_to)
        try:
            self._verify(record, message)
        except SignatureRefused as exc:
            return [self._refuse_signature(record, message, exc)]
        try:
            if isinstance(message, RegisterAgent):
                await self._check_endpoint(message)
                await ensure_topics(self._cfg, (), agent_ids=[agent_id])
            entries = self.catalog.decide(message, utcnow())
        except RegistrationRefused as exc:
            log.warning(
                "registry_registration_refused",
                agent_id=agent_id,
                command=message.type,
                owner=getattr(message.data, "owner", None),
                code=exc.code,
                reason=str(exc),
            )
            out = [self._reject(record, exc)]
            return out + self._outcome(agent_id, refused(message, exc), reply_to)
        except Exception as exc:  # the catalogue cannot take it: a dead letter, not a loop
            return [self._reject(record, exc)]
        outcome = accepted(message, entries, self.catalog.agents.get(agent_id))
        return self._entries(entries) + self._outcome(agent_id, outcome, reply_to)

    async def _check_endpoint(self, cmd: RegisterAgent) -> None:
        """Refuse an endpoint whose host already resolves to an address the relay would
        refuse to call (the relay's connect-time guard still checks every call)."""
        info = cmd.data.agent
        check_registration(info)
        if info.transport == "http" and info.endpoint:
            why = await endpoint_refusal(self._settings.address_policy, info.endpoint)
            if why is not None:
                raise RegistrationRefused(f"endpoint {info.endpoint!r}: {why}")

    def _entries(self, entries: list[Entry]) -> list[Outgoing]:
        return [Outgoing(self._events, e.data.agent.agent_id, e) for e in entries]

    def _outcome(self, agent_id: str, outcome: Outcome, reply_to: str | None) -> list[Outgoing]:
        out = [Outgoing(self._audit, agent_id, record) for record in outcome.audit]
        if outcome.reply is not None and reply_to:
            out.append(Outgoing(self._replies, reply_to, outcome.reply, reply_to=reply_to))
        return out

    def _misrouted(self, topic: str, message: Message) -> str | None:
        if topic not in (self._commands, self._requests):
            return None
        return misrouted(message, from_gateway=topic == self._requests)

    def _verify(self, record: ConsumerRecord[Any, Any], message: Message) -> None:
        headers = [(k, bytes(v)) for k, v in record.headers or ()]
        base = topic_base(record.topic, self._cfg.prefix)
        value = bytes(record.value or b"")
        verify(message, self.catalog, self.relay_key, headers, base, record.key, value)

    def _refuse_signature(
        self, record: ConsumerRecord[Any, Any], message: Message, error: SignatureRefused
    ) -> Outgoing:
        """A message whose signature did not check out changes nothing: counted, logged,
        dead-lettered (the gateway waits for no agent's own registration)."""
        ops.SIGNATURE_FAILURES.labels("registry", error.reason).inc()
        log.warning(
            "registry_signature_refused",
            type=message.type,
            reason=error.reason,
            key=record.key.decode(errors="replace") if record.key else None,
            offset=record.offset,
            error=str(error),
        )
        return self._reject(record, error)

    def _reject(self, record: ConsumerRecord[Any, Any], error: Exception) -> Outgoing:
        log.warning("registry_dead_letter", **problem_fields(record, error))
        return dead_letter_outgoing(self._cfg, dead_letter(record, error, "registry"))


def _log_changes(out: list[Outgoing]) -> None:
    for item in out:
        m = item.message
        if isinstance(m, AgentRegistered | AgentStatusChanged | AgentDeregistered):
            log.info(
                "agent_catalog_changed",
                agent_id=item.key,
                type=m.type,
                active=m.data.active,
                owner=m.data.owner,
                reason=m.data.reason,
            )


async def main(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, RegistrySettings)
    cfg = ctx.kafka
    partitions = await co_partitioned(cfg)
    relay_key = RelayKey()
    keys = TopicFollower(
        cfg.background(), cfg.topic(topics.REGISTRY_EVENTS), relay_key.apply, name="relay-key"
    )
    await keys.start()
    await keys.wait_caught_up()
    registry = Registry(cfg, settings, partitions, relay_key)
    projector = Projector(
        cfg.background(), settings.database_url, PROJECTION, schema=settings.db_schema
    )
    await projector.start()
    await registry.start()
    next_sweep = time.monotonic() + settings.sweep_interval_s
    try:
        while not ctx.stopping.is_set():
            await registry.producers.prepare()
            batches = await registry.consumer.getmany(timeout_ms=200, max_records=500)
            if batches:
                await registry.process(await registry.top_up(batches))
            if time.monotonic() >= next_sweep:
                await registry.sweep()
                next_sweep = time.monotonic() + settings.sweep_interval_s
    finally:
        await registry.stop()
        await projector.stop()
        await keys.stop()


async def co_partitioned(cfg: KafkaConfig) -> int:
    """The registry's inputs' common partition count: an agent's partition must be the
    same on all three, or one replica would decide its key and another its registration."""
    names = [cfg.topic(t) for t in (topics.REGISTRY_COMMANDS, topics.REGISTRY_REQUESTS,
                                    topics.REGISTRY_ADMIN, topics.REGISTRY_HEARTBEATS)]  # fmt: skip
    counts = {name: len(await partitions_of(cfg, name)) for name in names}
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"the registry's input topics must be co-partitioned, got {counts}")
    return counts[names[0]]
