"""Liveness, status of the infrastructure and services, metrics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ..deps import OperationsDep
from ..models import Health, MetricsSummaryView, Status

router = APIRouter(tags=["operations"])

_STATUS_DOC: dict[int | str, dict[str, Any]] = {
    503: {"model": Status, "description": "A component (Kafka, PostgreSQL, Redis) is down"}
}
_METRICS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text; the JSON summary with `Accept: application/json`.",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": MetricsSummaryView.model_json_schema()},
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


@router.get("/status", response_model=Status, responses=_STATUS_DOC)
async def status(operations: OperationsDep) -> JSONResponse:
    """Kafka, PostgreSQL and Redis, the gateway's projections, every service instance's
    last heartbeat and each consumer group's lag (cached a few seconds)."""
    body, healthy = await operations.status()
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", response_class=Response, responses=_METRICS_DOC)
async def metrics(request: Request, operations: OperationsDep) -> Response:
    """Prometheus text of this replica; with `Accept: application/json`, the operators'
    summary projected from `spine.metrics.summary`."""
    text = await operations.prometheus()
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(await operations.summary())
    return Response(text, media_type=CONTENT_TYPE_LATEST)
