"""Wiring of the auth service: the transactional loop over ``spine.auth.commands`` and the
projector of ``spine.auth.events`` into PostgreSQL, until the service is told to stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack

from spine_contracts import topics
from spine_servicekit.kafka import KafkaConfig, make_admin
from spine_servicekit.logging import get_logger
from spine_servicekit.projector import BATCH_INTERVAL_S, Projector
from spine_servicekit.runtime import ServiceContext
from spine_servicekit.txloop import TransactionalLoop

from .errors import NotCoPartitioned
from .handlers import AuthHandler
from .projector import auth_projection
from .settings import AuthSettings

log = get_logger(__name__)


async def check_co_partitioned(cfg: KafkaConfig, *, wait_s: float = 15.0) -> int:
    """The shared partition count of the auth commands and events topics (they must match:
    a partition's accounts are rebuilt from the same partition of the events).

    A topic that was just created may take a moment to show in the broker's metadata, so
    a missing one is waited for up to ``wait_s``; different counts fail at once.
    """
    names = (cfg.topic(topics.AUTH_COMMANDS), cfg.topic(topics.AUTH_EVENTS))
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        counts = await partition_counts(cfg, names)
        if 0 not in counts.values() or time.monotonic() > deadline:
            break
        await asyncio.sleep(delay)  # metadata propagation has no event to wait on
        delay = min(delay * 2, 1.0)
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise NotCoPartitioned(f"auth topics must exist with one partition count, got {counts}")
    return counts[names[0]]


async def partition_counts(cfg: KafkaConfig, names: Sequence[str]) -> dict[str, int]:
    """Partitions per topic (0: missing), from the broker rather than a client's cache."""
    admin = make_admin(cfg)
    await admin.start()
    try:
        # every topic's metadata: asking for named ones may auto-create them
        described = await admin.describe_topics()
    finally:
        await admin.close()
    counts = dict.fromkeys(names, 0)
    for topic in described:
        if topic.get("error_code", 0) == 0 and topic.get("topic") in counts:
            counts[topic["topic"]] = len(topic.get("partitions") or ())
    return counts


def make_loop(cfg: KafkaConfig, handler: AuthHandler, *, max_batch: int = 500) -> TransactionalLoop:
    """The loop every auth replica runs: one consumer group, one transactional id per partition."""
    return TransactionalLoop(
        cfg,
        group_id=f"{cfg.prefix}auth",
        input_topics=[cfg.topic(topics.AUTH_COMMANDS)],
        handler=handler,
        transactional_id_prefix=f"{cfg.prefix}auth",
        consumer_name="auth",
        max_batch=max_batch,
    )


def make_projector(cfg: KafkaConfig, settings: AuthSettings) -> Projector:
    """Replicas split the events' partitions through a consumer group; one schema for all.
    No request waits on it, so its fetch is batched by the broker (``KafkaConfig.batched``)."""
    return Projector(
        cfg.batched(),
        settings.database_url,
        auth_projection(),
        schema=settings.db_schema,
        group_id=f"{cfg.prefix}auth-projector",
        min_interval_s=BATCH_INTERVAL_S,
    )


async def run_auth(ctx: ServiceContext, settings: AuthSettings) -> None:
    """Decide commands and project events until ``ctx.stopping``; a crash of either raises."""
    cfg = ctx.kafka
    partitions = await check_co_partitioned(cfg)
    handler = AuthHandler(cfg, partition_count=partitions, limits=settings.limits())
    loop = make_loop(cfg, handler, max_batch=settings.max_batch)
    watched: set[asyncio.Task[None]] = set()
    try:
        async with AsyncExitStack() as stack:
            if settings.projector_enabled:
                projector = make_projector(cfg, settings)
                await projector.start()
                stack.push_async_callback(projector.stop)
                # wait_for(never) only ever raises: ProjectorFailed when its loop dies.
                watched.add(asyncio.create_task(projector.wait_for(lambda _: False)))
            await loop.start()
            stack.push_async_callback(loop.stop)  # lets the in-flight transactions finish
            watched.add(asyncio.create_task(loop.run(), name="auth-txloop"))
            ctx.details.update(schema=settings.db_schema, partitions=partitions)
            stopping = asyncio.create_task(ctx.stopping.wait())
            try:
                done, _ = await asyncio.wait(
                    {stopping, *watched}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopping.cancel()
            if stopping not in done:
                for task in done:
                    task.result()  # raises what stopped the loop or the projector
                raise RuntimeError("the auth loop stopped on its own")
            log.info("auth_stopping")
    finally:
        for task in watched:
            task.cancel()
        await asyncio.gather(*watched, return_exceptions=True)
