"""Flows and agents: the catalogues, read from the gateway's projection."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from spine_contracts import AgentInfo, FlowDefinition
from spine_flows import FlowValidationError, load_flow_text, validate_flow_dict

from ..deps import ServiceDep, UserDep
from ..errors import InvalidInput, error_responses
from ..models import (
    FLOW_ID_PATTERN,
    ID_PATTERN,
    AgentList,
    AgentRemoved,
    AgentView,
    FlowDeletedView,
    FlowList,
    FlowView,
    FlowWritten,
    RegisterAgentRequest,
    has_nul,
)
from ..service import GatewayService

router = APIRouter(tags=["catalog"], responses=error_responses(400, 401, 403, 413, 422, 429, 503))
_404 = error_responses(404)
FlowId = Annotated[str, Path(pattern=FLOW_ID_PATTERN)]
AgentId = Annotated[str, Path(pattern=ID_PATTERN)]

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


async def _flow_from_body(
    request: Request, service: GatewayService, flow_id: str | None
) -> FlowDefinition:
    raw = await request.body()
    ctype = request.headers.get("content-type", "")
    try:
        if "json" in ctype or (raw.lstrip()[:1] in (b"{", b"[")):
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"body is not JSON: {exc}") from exc
            if isinstance(obj, dict) and isinstance(obj.get("definition"), dict):
                obj = obj["definition"]
            if isinstance(obj, dict) and flow_id is not None:
                obj.setdefault("flow_id", flow_id)
            if has_nul(obj):
                raise InvalidInput("text must not contain NUL characters")
            defn = validate_flow_dict(obj, "api")
        else:
            text = raw.decode(errors="replace")
            if "\x00" in text:
                raise InvalidInput("text must not contain NUL characters")
            defn = load_flow_text(text, "api")
    except FlowValidationError as exc:
        raise service.invalid_flow(exc) from exc
    if flow_id is not None and defn.flow_id != flow_id:
        raise InvalidInput(f"flow_id {defn.flow_id!r} does not match the path's {flow_id!r}")
    return defn


@router.get("/flows", response_model=FlowList)
async def list_flows(_user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.flows()


@router.get("/flows/{flow_id}", response_model=FlowView, responses=_404)
async def get_flow(flow_id: FlowId, _user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.flow(flow_id)


@router.post(
    "/flows",
    status_code=201,
    response_model=FlowWritten,
    responses={
        200: {"model": FlowWritten, "description": "Replaced an existing flow"},
        **_404,
    },
    openapi_extra=_FLOW_BODY,
)
async def create_flow(request: Request, _user: UserDep, service: ServiceDep) -> JSONResponse:
    """A flow as JSON (or YAML text), validated like the flow files; 201 new, 200 replaced."""
    defn = await _flow_from_body(request, service, None)
    result = await service.define_flow(defn)
    return JSONResponse(result, status_code=201 if result["created"] else 200)


@router.put(
    "/flows/{flow_id}", response_model=FlowWritten, responses=_404, openapi_extra=_FLOW_BODY
)
async def put_flow(
    flow_id: FlowId, request: Request, _user: UserDep, service: ServiceDep
) -> dict[str, Any]:
    return await service.define_flow(await _flow_from_body(request, service, flow_id))


@router.delete("/flows/{flow_id}", response_model=FlowDeletedView, responses=_404)
async def delete_flow(flow_id: FlowId, _user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.delete_flow(flow_id)


@router.get("/agents", response_model=AgentList)
async def list_agents(_user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.agents()


@router.get("/agents/active", response_model=AgentList)
async def active_agents(_user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.agents(active_only=True)


@router.get("/agents/{agent_id}", response_model=AgentView, responses=_404)
async def get_agent(agent_id: AgentId, _user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.agent(agent_id)


@router.post(
    "/agents",
    status_code=201,
    response_model=AgentView,
    responses={202: {"model": AgentView, "description": "Sent; the registry has not answered"}},
)
async def register_agent(
    body: RegisterAgentRequest, _user: UserDep, service: ServiceDep
) -> JSONResponse:
    """Register (or update) an agent: `{agent_id, name, description, endpoint, capabilities,
    agent_type}`; the original SDK's `{name, type, configuration}` works too."""
    metadata = dict(body.metadata)
    if body.configuration:
        metadata["configuration"] = body.configuration
    fields: dict[str, Any] = {
        "agent_id": body.agent_id or service.agent_id_for(body.name),
        "name": body.name,
        "description": body.description,
        "endpoint": body.endpoint,
        "capabilities": tuple(body.capabilities),
        "agent_type": body.agent_type or body.type or "processor",
        "transport": body.transport or ("http" if body.endpoint else "kafka"),
        "version": body.version,
        "rate_limit": body.rate_limit,
        "metadata": metadata,
    }
    try:
        info = AgentInfo(**fields)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise InvalidInput("invalid agent", extra={"errors": errors}) from exc
    result, shown = await service.register_agent(info)
    return JSONResponse(result, status_code=201 if shown else 202)


@router.delete("/agents/{agent_id}", response_model=AgentRemoved, responses=_404)
async def deregister_agent(
    agent_id: AgentId, _user: UserDep, service: ServiceDep
) -> dict[str, Any]:
    return await service.deregister_agent(agent_id)
