"""Wiring of the registry: commands and heartbeats in, whole catalogue entries out.

One consumer group over the co-partitioned commands and heartbeats (key agent_id), so one
replica decides for an agent. Entries are full state and idempotent, so at-least-once
delivery suffices here: offsets are committed after the entries are acknowledged.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from spine_contracts import ContractError, Message, RegisterAgent, parse, to_bytes, topics, utcnow
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import dead_letter, ensure_topics, headers_for, make_consumer
from spine_servicekit.logging import get_logger
from spine_servicekit.projector import Projector
from spine_servicekit.runtime import ServiceContext

from .domain import Catalog, Entry
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
    projector = Projector(cfg, settings.database_url, PROJECTION, schema=settings.schema_name)
    await projector.start()
    await consumer.start()
    sweeper = asyncio.create_task(sweep(), name="registry-sweep")
    deadletters = cfg.topic(topics.DEADLETTER)
    try:
        while not ctx.stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            for records in batches.values():
                for record in records:
                    try:
                        message: Message = parse(record.value)
                    except ContractError as exc:
                        dl = dead_letter(record, exc, "registry")
                        await producer.send(deadletters, to_bytes(dl), key=record.key)
                        continue
                    if isinstance(message, RegisterAgent):
                        await ensure_topics(cfg, (), agent_ids=[message.data.agent.agent_id])
                    await emit(catalog.decide(message, utcnow()))
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
