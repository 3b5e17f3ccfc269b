"""Operations: liveness of the infrastructure and of every service instance, consumer lag,
Prometheus metrics of this replica, the operators' summary and a user's own summary. The
routes in ``routes/ops.py`` call this with the view the policy granted
(``identity.ops_view``); the probes of Kafka, PostgreSQL and Redis are passed in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import generate_latest
from spine_contracts.access import owner_may_use
from spine_servicekit.projector import Projector

from . import __version__
from .adapters.kafka import ConsumerLag, Heartbeats, MetricsSummary, UsageRecorder
from .adapters.postgres import ReadModel
from .metrics import GatewayMetrics
from .policy import OpsView

Probe = Callable[[], Awaitable[Any]]
ACTIVE_STATUSES = ("pending", "queued", "running", "waiting_input")
ENDED_STATUSES = ("completed", "failed", "cancelled")
ALL_STATUSES = (*ACTIVE_STATUSES, *ENDED_STATUSES)


@dataclass
class Observers:
    """What the operations endpoints read besides the read model."""

    heartbeats: Heartbeats
    summary: MetricsSummary
    lag: ConsumerLag
    usage: UsageRecorder
    started: float = field(default_factory=time.time)


async def check(probe: Probe) -> dict[str, Any]:
    """One component's state: ok with its latency, or the error's name (within 2 s)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(2.0):
            await probe()
        return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:  # a probe reports any failure as the component's state
        return {"status": "error", "error": type(exc).__name__}


class OperationsService:
    def __init__(
        self,
        *,
        read: ReadModel,
        observers: Observers,
        projectors: list[Projector],
        probes: dict[str, Probe],
        metrics: GatewayMetrics,
        heartbeat_interval_s: float,
    ) -> None:
        self.read = read
        self.observers = observers
        self.projectors = projectors
        self.probes = probes  # kafka, postgresql, redis
        self.metrics = metrics
        self.heartbeat_interval_s = heartbeat_interval_s

    async def status(self, view: OpsView) -> tuple[dict[str, Any], bool]:
        """The body of ``/status`` and whether every component is healthy. The liveness
        view says only that (up or degraded, version, uptime): which instances run, their
        agents and lag are the operator's (``OpsView.ALL``)."""
        names = list(self.probes)
        if view is not OpsView.ALL:
            results = await asyncio.gather(*(check(self.probes[n]) for n in names))
            healthy = all(c["status"] == "ok" for c in results)
            return self._liveness(healthy), healthy
        *results, groups = await asyncio.gather(
            *(check(self.probes[n]) for n in names), self.consumer_groups()
        )
        checks = dict(zip(names, results, strict=True))
        healthy = all(c["status"] == "ok" for c in checks.values())
        body = {
            **self._liveness(healthy),
            "components": checks,
            "projections": {
                p.projection.name: "running" if p.running else "stopped" for p in self.projectors
            },
            "services": self.services(),
            "consumer_groups": groups,
            "consumer_groups_age_s": self.observers.lag.age_s,
        }
        return body, healthy

    def _liveness(self, healthy: bool) -> dict[str, Any]:
        return {
            "status": "healthy" if healthy else "degraded",
            "version": __version__,
            "uptime": round(time.time() - self.observers.started, 3),
        }

    def services(self) -> list[dict[str, Any]]:
        now = time.time()
        # an instance is alive while its beats keep coming (three intervals of slack)
        stale_after = 3 * self.heartbeat_interval_s
        out = []
        for instance, (beat, at) in sorted(self.observers.heartbeats.last.items()):
            age = now - at.timestamp()
            out.append(
                {
                    "service": beat.data.service,
                    "instance_id": instance,
                    "status": beat.data.status,
                    "alive": beat.data.status != "stopping" and age <= stale_after,
                    "last_heartbeat": at.isoformat(),
                    "age_s": round(age, 3),
                    "details": beat.data.details,
                }
            )
        return out

    async def consumer_groups(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(5.0):
                return await self.observers.lag.groups()
        except TimeoutError:  # the measurement goes on; a later /status shows it
            return {"error": "TimeoutError"}

    async def prometheus(self) -> bytes:
        """This replica's metrics, with the gauges read now."""
        m = self.metrics
        counts = await self.read.status_counts()
        for name in ALL_STATUSES:
            m.executions.labels(status=name).set(counts.get(name, 0))
        m.agents_active.set(len(await self.read.agents(active_only=True)))
        usage = self.observers.usage
        m.usage_records.labels("sent").set(usage.sent)
        m.usage_records.labels("dropped").set(usage.dropped)
        m.usage_records.labels("failed").set(usage.failed)
        groups = await self.consumer_groups()  # cached like /status's; measured in background
        m.consumer_lag.clear()  # a group that is gone leaves no stale series
        for group, lag in groups.items():
            for topic, value in (lag.get("topics") or {}).items() if isinstance(lag, dict) else ():
                m.consumer_lag.labels(group, topic).set(value)
        return generate_latest(m.registry)

    async def summary(self, view: OpsView, user_id: str | None) -> dict[str, Any]:
        """The ``/metrics`` JSON: every tenant's (``OpsView.ALL``) or one user's own."""
        if view is OpsView.ALL:
            return await self.operators_summary()
        if view is OpsView.OWN and user_id is not None:
            return await self.user_summary(user_id)
        raise ValueError(f"no metrics summary for the view {view.value}")  # the policy's bug

    async def operators_summary(self) -> dict[str, Any]:
        """The operators' summary from ``spine.metrics.summary`` (the metrics service's
        aggregates), plus the catalogue sizes and the in-flight count of this read model."""
        summary = self.observers.summary
        counts = await self.read.status_counts()
        flows = len(await self.read.flows())
        agents = await self.read.agents()
        total = summary.value("executions_total")
        return {
            "timestamp": datetime.now(UTC).isoformat(),
            "scope": "all",
            "executions_total": int(total) if total is not None else sum(counts.values()),
            "executions_active": sum(counts.get(s, 0) for s in ACTIVE_STATUSES),
            "flows_total": flows,
            "agents_total": len(agents),
            "agents_active": sum(1 for a in agents if a["active"]),
            "success_rate": summary.value("success_rate"),
            "failure_rate": summary.value("failure_rate"),
            "average_execution_ms": summary.value("average_execution_ms"),
            "credits_spent": summary.value("credits_spent"),
            "summary": {name: entry["value"] for name, entry in sorted(summary.values.items())},
            "summary_updated_at": max(
                (e["updated_at"] for e in summary.values.values()), default=None
            ),
            "executions": {"total": sum(counts.values()), "by_status": counts},
        }

    async def user_summary(self, user_id: str) -> dict[str, Any]:
        """The same fields as the operators' summary, over one user's executions and usage
        only (this read model's rows; the metrics service's aggregates are every tenant's).
        ``credits_spent`` is what the user's requests reserved, as ``/users/me`` counts it
        (``usage.credits_used_total``); the catalogue sizes are what the user can list."""
        counts, average_ms, usage, flows, agents = await asyncio.gather(
            self.read.status_counts(user_id),
            self.read.average_duration_ms(user_id),
            self.read.usage(user_id),
            self.read.flows(),
            self.read.agents(),
        )
        # what the user may use: system flows and agents and their own
        flows = [f for f in flows if owner_may_use(f["owner"], user_id)]
        agents = [a for a in agents if owner_may_use(a["owner"], user_id)]
        total = sum(counts.values())
        ended = sum(counts.get(s, 0) for s in ENDED_STATUSES)
        mine: dict[str, Any] = {
            "executions_total": total,
            "executions_completed": counts.get("completed", 0),
            "executions_failed": counts.get("failed", 0),
            "executions_cancelled": counts.get("cancelled", 0),
            "success_rate": counts.get("completed", 0) / ended if ended else None,
            "failure_rate": counts.get("failed", 0) / ended if ended else None,
            "average_execution_ms": average_ms,
            "credits_spent": int(usage["credits"] or 0),
        }
        return {
            "timestamp": datetime.now(UTC).isoformat(),
            "scope": "user",
            "user_id": user_id,
            "executions_total": total,
            "executions_active": sum(counts.get(s, 0) for s in ACTIVE_STATUSES),
            "flows_total": len(flows),
            "agents_total": len(agents),
            "agents_active": sum(1 for a in agents if a["active"]),
            "success_rate": mine["success_rate"],
            "failure_rate": mine["failure_rate"],
            "average_execution_ms": mine["average_execution_ms"],
            "credits_spent": mine["credits_spent"],
            "summary": mine,
            "executions": {"total": total, "by_status": counts},
        }
