"""Flows: the shared catalogue; JSON or YAML bodies, validated like the flow files."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from ..deps import FlowsDep, UserDep
from ..errors import error_responses
from ..flows import parse_flow
from ..models import FLOW_ID_PATTERN, FlowDeletedView, FlowList, FlowView, FlowWritten
from . import answer

router = APIRouter(tags=["flows"], responses=error_responses(401, 403, 413, 422, 429, 503))
_404 = error_responses(404)
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
async def list_flows(_user: UserDep, flows: FlowsDep) -> Response:
    return answer(await flows.list())


@router.get("/flows/{flow_id}", response_model=FlowView, responses=_404)
async def get_flow(flow_id: FlowId, _user: UserDep, flows: FlowsDep) -> Response:
    return answer(await flows.get(flow_id))


@router.post(
    "/flows",
    status_code=201,
    response_model=FlowWritten,
    responses={200: {"model": FlowWritten, "description": "Replaced an existing flow"}, **_404},
    openapi_extra=_FLOW_BODY,
)
async def create_flow(request: Request, _user: UserDep, flows: FlowsDep) -> Response:
    """A flow as JSON (or YAML text), validated like the flow files; 201 new, 200 replaced."""
    written = await flows.define(await _body(request, None))
    return answer(written, 201 if written.created else 200)


@router.put(
    "/flows/{flow_id}", response_model=FlowWritten, responses=_404, openapi_extra=_FLOW_BODY
)
async def put_flow(flow_id: FlowId, request: Request, _user: UserDep, flows: FlowsDep) -> Response:
    return answer(await flows.define(await _body(request, flow_id)))


@router.delete("/flows/{flow_id}", response_model=FlowDeletedView, responses=_404)
async def delete_flow(flow_id: FlowId, _user: UserDep, flows: FlowsDep) -> Response:
    return answer(await flows.delete(flow_id))
