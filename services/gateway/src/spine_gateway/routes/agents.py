"""Agents: the catalogue, and registration (the registry decides; we answer its outcome)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import ValidationError
from spine_contracts import AgentInfo
from spine_contracts.agent_rules import registration_problem

from ..agents import agent_id_for
from ..deps import AgentsDep, DeleteAgentsDep, ReadAgentsDep, WriteAgentsDep
from ..errors import InvalidInput, error_responses
from ..models import ID_PATTERN, AgentList, AgentRemoved, AgentView, RegisterAgentRequest
from . import answer

router = APIRouter(tags=["agents"], responses=error_responses(401, 403, 413, 422, 429, 503))
_404 = error_responses(404)
AgentId = Annotated[str, Path(pattern=ID_PATTERN)]


@router.get("/agents", response_model=AgentList)
async def list_agents(caller: ReadAgentsDep, agents: AgentsDep) -> Response:
    return answer(await agents.list(caller))


@router.get("/agents/active", response_model=AgentList)
async def active_agents(caller: ReadAgentsDep, agents: AgentsDep) -> Response:
    return answer(await agents.list(caller, active_only=True))


@router.get("/agents/{agent_id}", response_model=AgentView, responses=_404)
async def get_agent(agent_id: AgentId, caller: ReadAgentsDep, agents: AgentsDep) -> Response:
    return answer(await agents.get(caller, agent_id))


def _info(body: RegisterAgentRequest) -> AgentInfo:
    metadata = dict(body.metadata)
    if body.configuration:
        metadata["configuration"] = body.configuration
    fields: dict[str, Any] = {
        "agent_id": body.agent_id or agent_id_for(body.name),
        "name": body.name,
        "description": body.description,
        "endpoint": body.endpoint,
        "capabilities": tuple(body.capabilities),
        "agent_type": body.agent_type or body.type or "processor",
        "transport": body.transport or ("http" if body.endpoint else "kafka"),
        "version": body.version,
        "rate_limit": body.rate_limit,
        "concurrency": body.concurrency,
        "metadata": metadata,
    }
    try:
        info = AgentInfo(**fields)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
        raise InvalidInput("invalid agent", extra={"errors": errors}) from exc
    problem = registration_problem(info)  # the registry refuses it again on arrival
    if problem is not None:
        raise InvalidInput(f"invalid agent: {problem}", code="INVALID_AGENT")
    return info


@router.post(
    "/agents",
    status_code=201,
    response_model=AgentView,
    responses={202: {"model": AgentView, "description": "Sent; the registry has not answered"}},
)
async def register_agent(
    body: RegisterAgentRequest, caller: WriteAgentsDep, agents: AgentsDep
) -> Response:
    """Register (or update) an agent: `{agent_id, name, description, endpoint, capabilities,
    agent_type}`; the original SDK's `{name, type, configuration}` works too. A new agent,
    or one given another endpoint, answers `status: waiting`, `active: false`: it becomes
    active with its first heartbeat (a bus agent) or successful health probe (HTTP)."""
    view, shown = await agents.register(caller, _info(body))
    return answer(view, 201 if shown else 202)


@router.delete("/agents/{agent_id}", response_model=AgentRemoved, responses=_404)
async def deregister_agent(
    agent_id: AgentId, caller: DeleteAgentsDep, agents: AgentsDep
) -> Response:
    return answer(await agents.deregister(caller, agent_id))
