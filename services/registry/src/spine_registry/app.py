"""Wiring of the registry: commands and heartbeats in, whole catalogue entries out.

One consumer group over the co-partitioned commands and heartbeats (key agent_id), so one
replica decides for an agent. Offsets are committed after the entries are acknowledged
(at least once); a command read again is recognised by its ``message_id`` among the
entries' causes (:class:`~spine_registry.domain.Catalog`), and entries are whole state
on a compacted topic, so nothing is applied twice.

Refusals: a registration the catalogue does not accept (an ``agent_type`` that is no node
type, an endpoint that is not ``http``/``https``, or whose host already resolves to an
address the relay refuses, see :mod:`.addresses`) changes nothing; it is logged as
``registry_registration_refused`` with the reason and dead-lettered with it.

Poison: a record that does not decode, whose type its topic does not carry, or that the
catalogue cannot decide goes to the dead-letter topic (deterministic ``message_id``, so a
replay after a crash sends the same letter) and the loop goes on.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from aiokafka import ConsumerRecord
from spine_contracts import (
    ContractError,
    DeregisterAgent,
    Message,
    RegisterAgent,
    to_bytes,
    topics,
    utcnow,
)
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import (
    dead_letter,
    dead_letter_outgoing,
    decode_record,
    ensure_topics,
    headers_for,
    make_consumer,
    problem_fields,
)
from spine_servicekit.logging import get_logger
from spine_servicekit.projector import Projector
from spine_servicekit.runtime import ServiceContext

from .addresses import endpoint_refusal
from .domain import Catalog, Entry, check_registration
from .errors import RegistrationRefused
from .projection import PROJECTION
from .settings import RegistrySettings

log = get_logger(__name__)


async def main(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, RegistrySettings)
    cfg = ctx.kafka
    producer = ctx.producer
    events_topic = cfg.topic(topics.REGISTRY_EVENTS)
    catalog = Catalog()

    loader = TopicFollower(cfg, events_topic, lambda m, _r: catalog.load(m, utcnow()))
    await loader.start()
    await loader.wait_caught_up()
    await loader.stop()
    log.info("catalog_loaded", agents=len(catalog.agents))

    async def emit(entries: list[Entry]) -> None:
        for entry in entries:
            key = entry.data.agent.agent_id
            await producer.send(
                events_topic, to_bytes(entry), key=key.encode(), headers=headers_for(entry)
            )
            log.info(
                "agent_catalog_changed",
                agent_id=key,
                type=entry.type,
                active=entry.data.active,
                reason=entry.data.reason,
            )
        if entries:
            await producer.flush()

    async def sweep() -> None:
        ttl = timedelta(seconds=settings.heartbeat_ttl_s)
        while True:
            await asyncio.sleep(settings.sweep_interval_s)
            await emit(catalog.sweep(utcnow(), ttl))

    consumer = make_consumer(
        cfg,
        cfg.topic(topics.REGISTRY_COMMANDS),
        cfg.topic(topics.REGISTRY_HEARTBEATS),
        group_id=f"{cfg.prefix}registry",
        isolation_level="read_uncommitted",
    )
    projector = Projector(
        cfg.background(), settings.database_url, PROJECTION, schema=settings.db_schema
    )
    await projector.start()
    await consumer.start()
    sweeper = asyncio.create_task(sweep(), name="registry-sweep")

    async def reject(record: ConsumerRecord[Any, Any], error: Exception) -> None:
        letter = dead_letter_outgoing(cfg, dead_letter(record, error, "registry"))
        key, value, headers = letter.encode()
        await producer.send(letter.topic, value, key=key, headers=headers)
        log.warning(
            "registry_dead_letter",
            **problem_fields(record, error),
        )

    async def check_endpoint(cmd: RegisterAgent) -> None:
        """Refuse an endpoint whose host already resolves to an address the relay would
        refuse to call (the relay's connect-time guard still checks every call)."""
        info = cmd.data.agent
        check_registration(info)
        if info.transport == "http" and info.endpoint:
            why = await endpoint_refusal(settings.address_policy, info.endpoint)
            if why is not None:
                raise RegistrationRefused(f"endpoint {info.endpoint!r}: {why}")

    async def handle(record: ConsumerRecord[Any, Any]) -> None:
        try:
            message: Message = decode_record(record, cfg.prefix)
        except ContractError as exc:
            await reject(record, exc)
            return
        if isinstance(message, (RegisterAgent, DeregisterAgent)) and catalog.is_duplicate(message):
            log.info("registry_duplicate_skipped", message_id=str(message.message_id))
            return
        try:
            if isinstance(message, RegisterAgent):
                await check_endpoint(message)
                await ensure_topics(cfg, (), agent_ids=[message.data.agent.agent_id])
            entries = catalog.decide(message, utcnow())
        except RegistrationRefused as exc:
            log.warning(
                "registry_registration_refused",
                agent_id=message.data.agent.agent_id if isinstance(message, RegisterAgent) else "",
                reason=str(exc),
            )
            await reject(record, exc)
            return
        except Exception as exc:  # the catalogue cannot take it: a dead letter, not a crash loop
            await reject(record, exc)
            return
        await emit(entries)

    try:
        while not ctx.stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            for records in batches.values():
                for record in records:
                    await handle(record)
            if batches:
                await producer.flush()
                await consumer.commit()
            if sweeper.done():
                sweeper.result()
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await consumer.stop()
        await projector.stop()
