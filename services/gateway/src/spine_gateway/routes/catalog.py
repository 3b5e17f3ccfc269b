"""Flows and agents: the catalogues, read from the gateway's projection."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from spine_contracts import AgentInfo, FlowDefinition
from spine_flows import FlowValidationError, load_flow_text, validate_flow_dict

from ..deps import ServiceDep, UserDep
from ..errors import InvalidInput
from ..models import RegisterAgentRequest

router = APIRouter(tags=["catalog"])


async def _flow_from_body(request: Request, service: Any, flow_id: str | None) -> FlowDefinition:
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
            defn = validate_flow_dict(obj, "api")
        else:
            defn = load_flow_text(raw.decode(errors="replace"), "api")
    except FlowValidationError as exc:
        raise service.invalid_flow(exc) from exc
    if flow_id is not None and defn.flow_id != flow_id:
        raise InvalidInput(f"flow_id {defn.flow_id!r} does not match the path's {flow_id!r}")
    return defn


@router.get("/flows")
async def list_flows(_user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.flows()


@router.get("/flows/{flow_id}")
async def get_flow(flow_id: str, _user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.flow(flow_id)


@router.post("/flows", status_code=201)
async def create_flow(request: Request, _user: UserDep, service: ServiceDep) -> JSONResponse:
    defn = await _flow_from_body(request, service, None)
    result = await service.define_flow(defn)
    return JSONResponse(result, status_code=201 if result["created"] else 200)


@router.put("/flows/{flow_id}")
async def put_flow(
    flow_id: str, request: Request, _user: UserDep, service: ServiceDep
) -> dict[str, Any]:
    return await service.define_flow(await _flow_from_body(request, service, flow_id))


@router.delete("/flows/{flow_id}")
async def delete_flow(flow_id: str, _user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.delete_flow(flow_id)


@router.get("/agents")
async def list_agents(_user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.agents()


@router.get("/agents/active")
async def active_agents(_user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.agents(active_only=True)


@router.get("/agents/{agent_id}")
async def get_agent(agent_id: str, _user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.agent(agent_id)


@router.post("/agents", status_code=201)
async def register_agent(
    body: RegisterAgentRequest, _user: UserDep, service: ServiceDep
) -> JSONResponse:
    fields = body.model_dump()
    fields["transport"] = body.transport or ("http" if body.endpoint else "kafka")
    fields["capabilities"] = tuple(body.capabilities)
    try:
        info = AgentInfo(**fields)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise InvalidInput("invalid agent", extra={"errors": errors}) from exc
    result, shown = await service.register_agent(info)
    return JSONResponse(result, status_code=201 if shown else 202)


@router.delete("/agents/{agent_id}")
async def deregister_agent(agent_id: str, _user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.deregister_agent(agent_id)
