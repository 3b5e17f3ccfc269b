"""The gateway's parts, opened in order and closed in reverse by the caller's exit stack:
Kafka clients, projectors (the read model), PostgreSQL and Redis, then the resource services
that requests reach through ``deps.Gateway``. Nothing here runs at import."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
from redis.asyncio import Redis
from spine_servicekit.kafka import KafkaConfig, make_producer
from spine_servicekit.postgres import create_pool
from spine_servicekit.projector import BATCH_INTERVAL_S, Incoming, Projection, Projector

from .adapters.kafka import (
    AgentBeats,
    AgentProgressFeed,
    ConsumerLag,
    Heartbeats,
    MetricsSummary,
    Publisher,
    Replies,
    UsageRecorder,
)
from .adapters.postgres import ReadModel
from .adapters.redis import RedisStore
from .agents import AgentsService
from .apikeys import KeysService
from .audit import AuditService, audit_projection
from .cache import ReadCache, drop_changed_credentials, drop_changed_flows
from .commands import Commands
from .deps import Gateway
from .executions import ExecutionsService
from .feed import ExecutionFeed
from .flows import FlowsService
from .idempotency import Idempotency
from .identity import Credential, Identity
from .live import LiveTrail
from .metrics import GatewayMetrics
from .operations import Observers, OperationsService
from .pricing import Pricing
from .progress import DispatchBook, ProgressHub
from .projection import (
    Marks,
    agents_projection,
    executions_projection,
    flows_projection,
    usage_projection,
    users_projection,
)
from .settings import GatewaySettings
from .usage_series import UsageSeries
from .users import UsersService
from .visibility import ReadYourWrites

#: The read models requests wait on (users, executions) take a batch at most every 50 ms once
#: a batch holds this many records: under a burst, fewer and larger PostgreSQL transactions;
#: one execution at a time (1-3 records per batch) is never held.
BURST_RECORDS = 16
BURST_INTERVAL_S = 0.05


async def open_gateway(
    stack: AsyncExitStack, settings: GatewaySettings, replica: str, metrics: GatewayMetrics
) -> tuple[Gateway, list[Projector]]:
    """Everything a request can reach, and the projectors to catch up before serving."""
    cfg = KafkaConfig.from_settings(settings, client_id="gateway")
    background = cfg.background()
    producer = make_producer(cfg)
    await producer.start()
    stack.push_async_callback(producer.stop)
    marks = Marks()
    live = LiveTrail()
    dispatches = DispatchBook()
    progress = ProgressHub(
        dispatches,
        lambda reason: metrics.progress_dropped.labels(reason).inc(),
        metrics.progress_relayed.inc,
    )
    credentials: ReadCache[str, Credential] = ReadCache()
    flows_cache: ReadCache[str, Any] = ReadCache(limit=1_000)
    burst: dict[str, Any] = {"min_interval_s": BURST_INTERVAL_S, "pace_from": BURST_RECORDS}

    def projector(kafka: KafkaConfig, projection: Projection, **options: Any) -> Projector:
        return Projector(
            kafka, settings.database_url, projection, schema=settings.db_schema, **options
        )

    # paced only under a burst: one at a time, an execute's answer already shows the
    # reserved balance
    users_p = projector(
        cfg, users_projection(marks), on_applied=drop_changed_credentials(credentials), **burst
    )
    flows_p = projector(cfg, flows_projection(marks), on_applied=drop_changed_flows(flows_cache))
    agents_p = projector(cfg, agents_projection(marks))

    def tap(batch: Sequence[Incoming]) -> None:
        dispatches.tap(batch)  # first: a stream fed by this batch knows its dispatches
        live.tap(batch)

    executions_p = projector(cfg, executions_projection(marks), tap=tap, **burst)
    batched = cfg.batched()  # read models no request waits on: the broker holds their fetch
    usage_p = projector(batched, usage_projection(), min_interval_s=BATCH_INTERVAL_S)
    audit_p = projector(batched, audit_projection(), min_interval_s=BATCH_INTERVAL_S)
    projectors = [users_p, flows_p, agents_p, executions_p, usage_p, audit_p]
    for each in projectors:  # one by one: they share the schema's ledger
        await each.start()
        stack.push_async_callback(each.stop)
    pool = await create_pool(
        settings.database_url,
        schema=settings.db_schema,
        application_name=f"gateway:{replica}",
        min_size=2,
        max_size=20,
        reset=_keep_session,
    )
    stack.push_async_callback(pool.close)
    redis = Redis.from_url(settings.redis_url)
    stack.push_async_callback(redis.aclose)
    replies = Replies(cfg, replica)
    heartbeats = Heartbeats(background)
    agent_beats = AgentBeats(background, settings.agent_beat_stale_s)
    progress_feed = AgentProgressFeed(background, progress, agent_beats.activity)
    summary = MetricsSummary(background)
    usage = UsageRecorder(cfg, producer, max_pending=settings.usage_buffer)
    lag = ConsumerLag(background, cache_s=settings.lag_cache_s)
    stack.push_async_callback(lag.stop)
    for part in (replies, heartbeats, agent_beats, progress_feed, summary, usage):
        stack.push_async_callback(part.stop)
    # independent clients: connect them side by side (each stop is safe unstarted)
    await asyncio.gather(
        replies.start(),
        heartbeats.start(),
        agent_beats.start(),
        progress_feed.start(),
        summary.start(),
        usage.start(),
    )
    read = ReadModel(pool)
    store = RedisStore(redis, settings.topic_prefix)
    commands = Commands(Publisher(cfg, producer), replies, settings.reply_timeout_s)
    rw = ReadYourWrites(marks, live, settings.projection_timeout_s)
    idempotency = Idempotency(
        store,
        ttl_s=settings.idempotency_ttl_s,
        # the first request may wait for auth's reply and then for its read model
        wait_s=settings.reply_timeout_s + settings.projection_timeout_s + 5,
    )
    gateway = Gateway(
        settings=settings,
        identity=Identity(settings, read, store, credentials),
        users=UsersService(commands=commands, read=read, rw=rw, users=users_p, usage=usage),
        flows=FlowsService(commands=commands, read=read, rw=rw, flows=flows_p),
        agents=AgentsService(
            commands=commands, read=read, rw=rw, agents=agents_p, activity=agent_beats.activity
        ),
        executions=ExecutionsService(
            commands=commands,
            read=read,
            store=store,
            rw=rw,
            idempotency=idempotency,
            executions=executions_p,
            live=live,
            progress=progress,
            flows=flows_cache,
            start_timeout_s=settings.projection_timeout_s,
            pricing=Pricing(
                settings.min_credits_per_execution,
                settings.min_credits_per_agent_node,
                token_floor=settings.tenant_token_pricing,
                token_allowance=settings.tenant_token_allowance,
            ),
        ),
        keys=KeysService(commands=commands, read=read, store=store, rw=rw, users=users_p),
        audit=AuditService(pool),
        feed=ExecutionFeed(pool, executions_p),
        usage_series=UsageSeries(pool),
        operations=OperationsService(
            read=read,
            observers=Observers(heartbeats=heartbeats, summary=summary, lag=lag, usage=usage),
            projectors=projectors,
            probes={
                "kafka": producer.client.fetch_all_metadata,
                "postgresql": read.ping,
                "redis": store.ping,
            },
            metrics=metrics,
            heartbeat_interval_s=settings.heartbeat_interval_s,
            expected=settings.expected,
        ),
    )
    return gateway, projectors


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The read pool's connections only run single statements (no LISTEN, cursors, session
    locks or SET), so the default reset on release (``RESET ALL``, ``UNLISTEN *`` ...) would
    be one more round trip per request for nothing."""
