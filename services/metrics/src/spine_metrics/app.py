"""Wiring of the metrics service: event topics in, Prometheus and the summary topic out."""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from spine_contracts import Message, MetricsSummaryUpdated, to_bytes, topics
from spine_servicekit.follower import TopicFollower
from spine_servicekit.logging import get_logger
from spine_servicekit.runtime import ServiceContext

from .aggregates import Aggregates
from .settings import MetricsSettings

log = get_logger(__name__)

EXECUTIONS_STARTED = Counter("spine_executions_started", "Executions started", ["flow_id"])
EXECUTIONS_FINISHED = Counter(
    "spine_executions_finished", "Executions finished", ["flow_id", "status"]
)
EXECUTION_DURATION = Histogram(
    "spine_execution_duration_seconds",
    "Execution duration",
    ["flow_id"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
NODE_LATENCY = Histogram(
    "spine_node_latency_seconds",
    "Node latency per agent",
    ["agent_id"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CREDITS_SPENT = Counter("spine_credits_spent", "Credits charged for executions")
ACTIVE_AGENTS = Gauge("spine_active_agents", "Agents currently active")


def observe(aggregates: Aggregates, message: Message) -> None:
    for metric, label, value, _kind in aggregates.apply(message):
        if metric == "executions_started":
            EXECUTIONS_STARTED.labels(label).inc()
        elif metric == "executions_finished":
            flow, status = label.split("|")
            EXECUTIONS_FINISHED.labels(flow, status).inc()
        elif metric == "execution_duration":
            EXECUTION_DURATION.labels(label).observe(value)
        elif metric == "node_latency":
            NODE_LATENCY.labels(label).observe(value)
        elif metric == "credits_spent":
            CREDITS_SPENT.inc(value)
    ACTIVE_AGENTS.set(len(aggregates.active_agents))


async def main(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, MetricsSettings)
    cfg = ctx.kafka
    aggregates = Aggregates()
    start_http_server(settings.metrics_port, addr=settings.api_host)
    followers = [
        TopicFollower(
            cfg.batched(),
            cfg.topic(spec),
            lambda m, _r: observe(aggregates, m),
            name=f"metrics-{spec.base}",
        )
        for spec in (topics.EXECUTION_EVENTS, topics.AUTH_EVENTS, topics.REGISTRY_EVENTS)
    ]
    for follower in followers:
        await follower.start()
    summary_topic = cfg.topic(topics.METRICS_SUMMARY)
    published: dict[str, float | None] = {}
    log.info("metrics_serving", port=settings.metrics_port)
    try:
        while not ctx.stopping.is_set():
            current = aggregates.summary()
            for metric, value in current.items():
                if published.get(metric, "unset") != value:
                    message = MetricsSummaryUpdated.build(metric=metric, value=value)
                    await ctx.producer.send(summary_topic, to_bytes(message), key=metric.encode())
                    published[metric] = value
            await ctx.producer.flush()
            try:
                await asyncio.wait_for(ctx.stopping.wait(), settings.summary_interval_s)
            except TimeoutError:
                pass
    finally:
        for follower in followers:
            await follower.stop()
