"""Agents: the catalogue read from the gateway's projection of the registry's events; a
registration is a command to the registry, answered once this replica's projection shows
its outcome (or 202 ``registering`` when it does not within a few seconds)."""

from __future__ import annotations

import re

from spine_contracts import AgentInfo, DeregisterAgent, RegisterAgent, topics
from spine_servicekit.projector import Projector

from .adapters.postgres import ReadModel
from .commands import Commands, new_request_id
from .errors import InvalidInput, NotFound
from .models import AgentList, AgentRemoved, AgentView
from .visibility import ReadYourWrites

_SLUG = re.compile(r"[^A-Za-z0-9_.\-]+")
#: how long a registration waits for the registry before answering 202
REGISTRY_WAIT_S = 5.0


def agent_id_for(name: str) -> str:
    """An agent id from a name, for clients that send only ``{name, type, ...}``."""
    slug = _SLUG.sub("-", name.strip().lower()).strip("-.")[:100]
    if not slug:
        raise InvalidInput("agent_id (or a name to derive it from) is required")
    return slug


class AgentsService:
    def __init__(
        self, *, commands: Commands, read: ReadModel, rw: ReadYourWrites, agents: Projector
    ) -> None:
        self.commands = commands
        self.read = read
        self.rw = rw
        self.projector = agents

    async def list(self, *, active_only: bool = False) -> AgentList:
        rows = await self.read.agents(active_only=active_only)
        return AgentList(agents=[AgentView.of(a) for a in rows])

    async def get(self, agent_id: str) -> AgentView:
        row = await self.read.agent(agent_id)
        if row is None:
            raise NotFound(f"agent {agent_id!r} not found", code="AGENT_NOT_FOUND")
        return AgentView.of(row)

    async def register(self, info: AgentInfo) -> tuple[AgentView, bool]:
        """Register (or update); ``True`` when the catalogue shows it already."""
        cmd = RegisterAgent.build(agent=info, request_id=new_request_id())
        await self.commands.publish(topics.REGISTRY_COMMANDS, info.agent_id, cmd)
        try:
            await self.rw.event(self.projector, "agent_cmd", str(cmd.message_id), REGISTRY_WAIT_S)
        except TimeoutError:
            pending = info.model_dump(mode="json")
            pending.update(
                type=info.agent_type,
                configuration=info.metadata.get("configuration", {}),
                status="registering",
            )
            return AgentView.model_validate(pending), False
        return await self.get(info.agent_id), True

    async def deregister(self, agent_id: str) -> AgentRemoved:
        await self.get(agent_id)
        cmd = DeregisterAgent.build(agent_id=agent_id, request_id=new_request_id())
        await self.commands.publish(topics.REGISTRY_COMMANDS, agent_id, cmd)
        try:
            await self.rw.event(self.projector, "agent_cmd", str(cmd.message_id), REGISTRY_WAIT_S)
        except TimeoutError:
            return AgentRemoved(agent_id=agent_id, status="deregistering")
        return AgentRemoved(agent_id=agent_id, status="deregistered")
