"""Prometheus metrics of this gateway replica (a private registry per app)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "spine_gateway_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "spine_gateway_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            registry=self.registry,
        )
        self.executions = Gauge(
            "spine_executions",
            "Executions in the read model by status",
            ["status"],
            registry=self.registry,
        )
        self.agents_active = Gauge(
            "spine_agents_active", "Active agents in the catalogue", registry=self.registry
        )
        self.consumer_lag = Gauge(
            "spine_consumer_lag",
            "Records not yet committed by each consumer group, per topic (as in /status)",
            ["group", "topic"],
            registry=self.registry,
        )
        self.usage_records = Gauge(
            "spine_gateway_usage_records",
            "UsageRecorded records since start, by fate",
            ["fate"],
            registry=self.registry,
        )
        self.progress_relayed = Counter(
            "spine_gateway_progress_relayed_total",
            "Agents' progress messages relayed to this replica's open streams",
            registry=self.registry,
        )
        self.progress_dropped = Counter(
            "spine_gateway_progress_dropped_total",
            "Agents' progress messages not relayed, by reason (spine_gateway.progress.Refusal)",
            ["reason"],
            registry=self.registry,
        )
