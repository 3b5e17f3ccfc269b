"""Liveness, status of the infrastructure and services, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import ServiceDep

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy", "service": "gateway"}


async def _check(probe: Any) -> dict[str, Any]:
    try:
        async with asyncio.timeout(2.0):
            await probe()
        return {"status": "ok"}
    except Exception as exc:  # a probe reports any failure as the component's state
        return {"status": "error", "error": type(exc).__name__}


@router.get("/status")
async def status(request: Request, service: ServiceDep) -> JSONResponse:
    producer = request.app.state.producer
    checks = {
        "kafka": await _check(producer.client.fetch_all_metadata),
        "postgresql": await _check(service.read.ping),
        "redis": await _check(service.store.ping),
    }
    projections = {
        p.projection.name: "running" if p.running else "stopped" for p in service.projectors.all()
    }
    healthy = all(c["status"] == "ok" for c in checks.values())
    body = {
        "status": "healthy" if healthy else "degraded",
        "components": checks,
        "projections": projections,
        "services": service.services(),
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics")
async def metrics(request: Request, service: ServiceDep) -> Response:
    m = request.app.state.metrics
    counts = await service.read.status_counts()
    for name in ("pending", "running", "waiting_input", "completed", "failed", "cancelled"):
        m.executions.labels(status=name).set(counts.get(name, 0))
    active = len((await service.agents(active_only=True))["agents"])
    m.agents_active.set(active)
    if "application/json" in request.headers.get("accept", ""):
        total = sum(counts.values())
        done = counts.get("completed", 0) + counts.get("failed", 0)
        return JSONResponse(
            {
                "executions": {
                    "total": total,
                    "by_status": counts,
                    "success_rate": counts.get("completed", 0) / done if done else None,
                },
                "agents": {"active": active},
                "requests_total": sum(
                    s.value
                    for metric in m.requests.collect()
                    for s in metric.samples
                    if s.name.endswith("_total")
                ),
                "services": len(service.services()),
            }
        )
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
