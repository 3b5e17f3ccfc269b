"""Liveness, status of the infrastructure and services, metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import __version__
from ..deps import ServiceDep
from ..models import Health, MetricsSummary, Status

router = APIRouter(tags=["operations"])

_STATUS_DOC: dict[int | str, dict[str, Any]] = {
    503: {"model": Status, "description": "A component (Kafka, PostgreSQL, Redis) is down"}
}
_METRICS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text; the JSON summary with `Accept: application/json`.",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": MetricsSummary.model_json_schema()},
        },
    }
}


@router.get("/health", response_model=Health)
async def health() -> dict[str, str]:
    """Liveness of this gateway process (no dependency is probed; see `/status`)."""
    return {
        "status": "healthy",
        "service": "gateway",
        "version": __version__,
        "timestamp": datetime.now(UTC).isoformat(),
    }


async def _check(probe: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(2.0):
            await probe()
        return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:  # a probe reports any failure as the component's state
        return {"status": "error", "error": type(exc).__name__}


@router.get("/status", response_model=Status, responses=_STATUS_DOC)
async def status(request: Request, service: ServiceDep) -> JSONResponse:
    """Kafka, PostgreSQL and Redis, the gateway's projections, every service instance's
    last heartbeat and each consumer group's lag (cached a few seconds)."""
    producer = request.app.state.producer
    kafka, postgresql, redis, groups = await asyncio.gather(
        _check(producer.client.fetch_all_metadata),
        _check(service.read.ping),
        _check(service.store.ping),
        service.consumer_groups(),
    )
    checks = {"kafka": kafka, "postgresql": postgresql, "redis": redis}
    projections = {
        p.projection.name: "running" if p.running else "stopped" for p in service.projectors.all()
    }
    healthy = all(c["status"] == "ok" for c in checks.values())
    body = {
        "status": "healthy" if healthy else "degraded",
        "version": __version__,
        "uptime": round(time.time() - service.observers.started, 3),
        "components": checks,
        "projections": projections,
        "services": service.services(),
        "consumer_groups": groups,
        "consumer_groups_age_s": service.observers.lag.age_s,
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", response_class=Response, responses=_METRICS_DOC)
async def metrics(request: Request, service: ServiceDep) -> Response:
    """Prometheus text of this replica; with `Accept: application/json`, the operators'
    summary projected from `spine.metrics.summary`."""
    m = request.app.state.metrics
    counts = await service.read.status_counts()
    for name in ("pending", "running", "waiting_input", "completed", "failed", "cancelled"):
        m.executions.labels(status=name).set(counts.get(name, 0))
    m.agents_active.set(len((await service.agents(active_only=True))["agents"]))
    usage = service.observers.usage
    m.usage_records.labels("sent").set(usage.sent)
    m.usage_records.labels("dropped").set(usage.dropped)
    m.usage_records.labels("failed").set(usage.failed)
    groups = await service.consumer_groups()  # cached like /status's; measured in background
    m.consumer_lag.clear()  # a group that is gone leaves no stale series
    for group, lag in groups.items():
        for topic, value in (lag.get("topics") or {}).items() if isinstance(lag, dict) else ():
            m.consumer_lag.labels(group, topic).set(value)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(await service.metrics_summary())
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
