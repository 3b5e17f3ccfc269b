"""Operations: liveness of the infrastructure, of every service instance and of what the
deployment expects to run (``liveness.Expected``), consumer lag, Prometheus metrics of this
replica, the operators' summary and a user's own summary. The routes in ``routes/ops.py``
call this with the view the policy granted (``identity.ops_view``); the probes of Kafka,
PostgreSQL and Redis are passed in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import generate_latest
from spine_contracts.access import SYSTEM, owner_may_use
from spine_servicekit.projector import Projector

from . import __version__
from .adapters.kafka import ConsumerLag, Heartbeats, MetricsSummary, UsageRecorder
from .adapters.postgres import ReadModel
from .liveness import Expected
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


@dataclass(frozen=True)
class Presence:
    """What runs of what the deployment expects (``liveness.Expected``)."""

    #: every live service instance (expected or not), by instance id
    instances: list[dict[str, Any]]
    #: each expected system agent's state in the registry's catalogue
    agents: list[dict[str, Any]]
    #: the expected entries with nothing running
    missing: list[str]


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
        expected: Expected,
    ) -> None:
        self.read = read
        self.observers = observers
        self.projectors = projectors
        self.probes = probes  # kafka, postgresql, redis
        self.metrics = metrics
        # an instance is alive while its beats keep coming (three intervals of slack)
        self.stale_after_s = 3 * heartbeat_interval_s
        self.expected = expected

    async def status(self, view: OpsView) -> tuple[dict[str, Any], bool]:
        """The body of ``/status`` and whether the installation is healthy: Kafka,
        PostgreSQL and Redis answer and everything expected runs. The liveness view says
        only that (up or degraded, version, uptime): which instances run, what is missing,
        their agents and lag are the operator's (``OpsView.ALL``)."""
        names = list(self.probes)
        probes = asyncio.gather(*(check(self.probes[n]) for n in names))
        if view is not OpsView.ALL:
            results, presence = await asyncio.gather(probes, self.presence())
            healthy = all(c["status"] == "ok" for c in results) and not presence.missing
            return self._liveness(healthy), healthy
        results, presence, groups = await asyncio.gather(
            probes, self.presence(), self.consumer_groups()
        )
        checks = dict(zip(names, results, strict=True))
        healthy = all(c["status"] == "ok" for c in checks.values()) and not presence.missing
        body = {
            **self._liveness(healthy),
            "components": checks,
            "projections": {
                p.projection.name: "running" if p.running else "stopped" for p in self.projectors
            },
            "expected": self.expected.names,
            "missing": presence.missing,
            "services": presence.instances,
            "agents": presence.agents,
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

    async def presence(self) -> Presence:
        instances = self.services()
        agents = await self.expected_agents()
        missing = self.expected.missing(
            (i["service"] for i in instances), (a["agent_id"] for a in agents if a["active"])
        )
        return Presence(instances, agents, missing)

    def services(self) -> list[dict[str, Any]]:
        """Every live service instance's last beat; a stale one is not listed at all."""
        return [
            {
                "service": beat.data.service,
                "instance_id": beat.data.instance_id,
                "status": beat.data.status,
                "alive": True,  # for readers of earlier versions, which listed the dead too
                "last_heartbeat": beat.occurred_at.isoformat(),
                "age_s": round(age, 3),
                "details": beat.data.details,
            }
            for beat, age in self.observers.heartbeats.live(time.time(), self.stale_after_s)
        ]

    async def expected_agents(self) -> list[dict[str, Any]]:
        """Each expected system agent as the registry's catalogue shows it (this replica's
        projection of ``spine.registry.events``): active while its signed beats keep
        coming. A catalogue that cannot be read (PostgreSQL down, within 2 s) shows every
        expected agent inactive, with the error: nothing is known to run."""
        wanted = self.expected.agents
        if not wanted:
            return []
        try:
            async with asyncio.timeout(2.0):
                rows = {r["agent_id"]: r for r in await self.read.agents_of(SYSTEM, wanted)}
        except Exception as exc:  # reported as the agents' state, like a probe's failure
            return [{"agent_id": a, "active": False, "error": type(exc).__name__} for a in wanted]
        out: list[dict[str, Any]] = []
        for agent_id in wanted:
            row = rows.get(agent_id)
            if row is None:
                out.append({"agent_id": agent_id, "active": False, "registered": False})
                continue
            seen = row["last_seen"]
            out.append(
                {
                    "agent_id": agent_id,
                    "active": row["active"],
                    "registered": True,
                    "last_seen": seen.isoformat() if seen is not None else None,
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
        ``credits_spent`` is what the user's executions were charged (``/users/me``'s
        ``usage.credits_used_total``); the catalogue sizes are what the user can list."""
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
