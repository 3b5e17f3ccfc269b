"""Liveness, status of the infrastructure and services, metrics. What a caller sees of
``/status`` and ``/metrics`` is decided by the policy (``identity.ops_view``, through the
``*AccessDep`` dependencies); a route only picks the format and answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ..deps import MetricsAccessDep, OperationsDep, StatusAccessDep
from ..errors import error_responses
from ..models import ErrorBody, Health, Liveness, MetricsSummaryView, Status
from ..policy import OpsEndpoint

router = APIRouter(tags=["operations"])

_STATUS_DOC: dict[int | str, dict[str, Any]] = {
    **error_responses(401, 429),
    503: {
        "model": Liveness | Status | ErrorBody,
        "description": "Degraded: a component (Kafka, PostgreSQL, Redis) is down, or a "
        "service or system agent the deployment expects (`SPINE_EXPECTED_SERVICES`) has "
        "nothing running",
    },
}
#: a key is optional on /status: FastAPI adds this empty requirement ("no key") to ApiKey's
_OPTIONAL_KEY: dict[str, Any] = {"security": [{}]}
_METRICS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Prometheus text (the master key or the scrape token); the JSON "
        "summary with `Accept: application/json` (a user's own figures, or the master "
        "key's every tenant's).",
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": MetricsSummaryView.model_json_schema()},
        },
    },
    **error_responses(401, 403, 429, 503),
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


@router.get(
    "/status",
    response_model=Liveness | Status,
    responses=_STATUS_DOC,
    openapi_extra=_OPTIONAL_KEY,
)
async def status(access: StatusAccessDep, operations: OperationsDep) -> JSONResponse:
    """Without a key, with a user's key or the scrape token: `status` (healthy when Kafka,
    PostgreSQL and Redis answer and every service and system agent the deployment expects
    runs; else degraded, 503), `version`, `uptime`. With the master key also the
    components, the gateway's projections, what is expected and what of it is missing,
    every live service instance's last heartbeat, the expected agents' state and each
    consumer group's lag (cached a few seconds). A key that is not valid is 401."""
    body, healthy = await operations.status(access.view)
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/metrics", response_class=Response, responses=_METRICS_DOC)
async def metrics(access: MetricsAccessDep, operations: OperationsDep) -> Response:
    """Prometheus text of this replica (the master key, or the operators' scrape token
    `SPINE_METRICS_SCRAPE_TOKEN`); with `Accept: application/json` a summary: a user's key
    gets that user's own figures, the master key every tenant's (projected from
    `spine.metrics.summary`). No key: 401; a user's key asking for the text: 403."""
    if access.endpoint is OpsEndpoint.METRICS_JSON:
        return JSONResponse(await operations.summary(access.view, access.user_id))
    return Response(await operations.prometheus(), media_type=CONTENT_TYPE_LATEST)
