"""Flow execution and the execution read model."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query
from sse_starlette.sse import EventSourceResponse

from ..deps import IdempotencyKey, ServiceDep, UserDep
from ..errors import InvalidInput
from ..models import CancelRequest, ExecuteRequest

router = APIRouter(tags=["executions"])


@router.post("/flows/execute")
async def execute_flow(
    body: ExecuteRequest, user: UserDep, service: ServiceDep, idem: IdempotencyKey = None
) -> dict[str, Any]:
    return await service.execute(user, body.flow_id, body.input_data, body.metadata, idem)


@router.get("/executions")
async def list_executions(
    user: UserDep,
    service: ServiceDep,
    status: str | None = None,
    flow_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    return await service.executions(
        user, status=status, flow_id=flow_id, limit=limit, offset=offset
    )


@router.get("/executions/{execution_id}")
async def get_execution(execution_id: str, user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.execution(user, execution_id)


@router.post("/executions/{execution_id}/cancel")
async def cancel_execution(
    execution_id: str,
    user: UserDep,
    service: ServiceDep,
    idem: IdempotencyKey = None,
    body: Annotated[CancelRequest | None, Body()] = None,
) -> dict[str, Any]:
    reason = body.reason if body is not None else None
    return await service.cancel(user, execution_id, reason, idem)


@router.post("/executions/{execution_id}/input")
async def provide_input(
    execution_id: str,
    user: UserDep,
    service: ServiceDep,
    idem: IdempotencyKey = None,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> dict[str, Any]:
    payload = dict(body or {})
    node_id = payload.pop("node_id", None)
    if node_id is not None and not isinstance(node_id, str):
        raise InvalidInput("node_id must be a string")
    data = payload.get("input", payload.get("input_data", payload))
    if not isinstance(data, dict):
        raise InvalidInput("input must be a JSON object")
    return await service.provide_input(user, execution_id, data, node_id, idem)


@router.get("/executions/{execution_id}/events")
async def execution_events(execution_id: str, user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.events(user, execution_id)


@router.get("/executions/{execution_id}/results")
async def execution_results(
    execution_id: str, user: UserDep, service: ServiceDep
) -> dict[str, Any]:
    return await service.results(user, execution_id)


@router.get("/executions/{execution_id}/messages")
async def execution_messages(
    execution_id: str, user: UserDep, service: ServiceDep
) -> dict[str, Any]:
    return await service.messages(user, execution_id)


@router.get("/messages/{execution_id}")
async def messages_alias(execution_id: str, user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.messages(user, execution_id)


@router.get("/executions/{execution_id}/stream")
async def execution_stream(
    execution_id: str,
    user: UserDep,
    service: ServiceDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    after: int | None = None
    if last_event_id:
        try:
            after = int(last_event_id)
        except ValueError as exc:
            raise InvalidInput("Last-Event-ID must be an integer sequence number") from exc
    events = await service.stream(user, execution_id, after)
    return EventSourceResponse(events, ping=int(service.settings.sse_keepalive_s))
