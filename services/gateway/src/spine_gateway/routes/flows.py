"""Flows: the shared catalogue; JSON or YAML bodies, validated like the flow files."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from ..deps import DeleteFlowsDep, FlowsDep, ReadFlowsDep, WriteFlowsDep
from ..errors import error_responses
from ..flows import parse_flow
from ..models import (
    FLOW_ID_PATTERN,
    FlowDeletedView,
    FlowGraph,
    FlowList,
    FlowView,
    FlowWritten,
)
from . import answer

router = APIRouter(tags=["flows"], responses=error_responses(401, 403, 413, 422, 429, 503))
_404 = error_responses(404)
_409 = error_responses(409)
FlowId = Annotated[str, Path(pattern=FLOW_ID_PATTERN)]

#: a flow travels as JSON (the flow object, or ``{"definition": {...}}``) or as YAML text
_FLOW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


async def _body(request: Request, flow_id: str | None) -> Any:
    return parse_flow(await request.body(), request.headers.get("content-type", ""), flow_id)


@router.get("/flows", response_model=FlowList)
async def list_flows(caller: ReadFlowsDep, flows: FlowsDep) -> Response:
    """System flows and the caller's own (the admin: every flow)."""
    return answer(await flows.list(caller))


@router.get("/flows/{flow_id}", response_model=FlowView, responses=_404)
async def get_flow(flow_id: FlowId, caller: ReadFlowsDep, flows: FlowsDep) -> Response:
    return answer(await flows.get(caller, flow_id))


@router.get("/flows/{flow_id}/graph", response_model=FlowGraph, responses=_404)
async def get_flow_graph(flow_id: FlowId, caller: ReadFlowsDep, flows: FlowsDep) -> Response:
    """The flow's nodes and edges, laid out in layers (``x``: depth, ``y``: index)."""
    return answer(await flows.graph(caller, flow_id))


@router.post(
    "/flows",
    status_code=201,
    response_model=FlowWritten,
    responses={
        200: {"model": FlowWritten, "description": "Replaced the caller's own flow"},
        **_404,
        **_409,
    },
    openapi_extra=_FLOW_BODY,
)
async def create_flow(request: Request, caller: WriteFlowsDep, flows: FlowsDep) -> Response:
    """A flow as JSON (or YAML text), validated like the flow files; 201 new (owned by the
    caller; the admin's are system flows), 200 the caller's own replaced, 409 an id someone
    else holds."""
    written = await flows.define(caller, await _body(request, None), post=True)
    return answer(written, 201 if written.created else 200)


@router.put(
    "/flows/{flow_id}",
    response_model=FlowWritten,
    responses={**_404, **_409},
    openapi_extra=_FLOW_BODY,
)
async def put_flow(
    flow_id: FlowId, request: Request, caller: WriteFlowsDep, flows: FlowsDep
) -> Response:
    """Replace the caller's flow (a system flow: the admin only, 403 otherwise) or create
    one; 409 when another user holds the id."""
    return answer(await flows.define(caller, await _body(request, flow_id), post=False))


@router.delete("/flows/{flow_id}", response_model=FlowDeletedView, responses=_404)
async def delete_flow(flow_id: FlowId, caller: DeleteFlowsDep, flows: FlowsDep) -> Response:
    return answer(await flows.delete(caller, flow_id))
