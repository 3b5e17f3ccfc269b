"""Agents: the catalogue read from the gateway's projection of the registry's events, each
agent ``system`` or one user's (DESIGN §12). A registration is a command to the registry —
the single writer per agent id, which refuses an id held by another owner — answered once
the registry replied and this replica's projection shows it (202 ``registering`` when the
registry does not answer within a few seconds). A registration is no sign of life: a new
agent, or one moved to another endpoint, is shown ``waiting`` (``active: false``) until its
first heartbeat or successful health probe reaches the registry."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

from spine_contracts import AgentInfo, DeregisterAgent, RegisterAgent, topics
from spine_contracts.access import SYSTEM
from spine_servicekit.projector import Projector

from .adapters.postgres import AgentRow, ReadModel
from .agent_beats import AgentActivity
from .commands import Commands, new_request_id
from .errors import Conflict, InvalidInput, NotFound, from_reply
from .identity import Principal
from .models import AgentList, AgentRemoved, AgentView
from .policy import HIDDEN, Action, check, visible
from .visibility import ReadYourWrites

_SLUG = re.compile(r"[^A-Za-z0-9_\-]+")  # agent ids contain no "." (DESIGN §12)
#: how long a registration waits for the registry before answering 202
REGISTRY_WAIT_S = 5.0


def agent_id_for(name: str) -> str:
    """An agent id from a name, for clients that send only ``{name, type, ...}``."""
    slug = _SLUG.sub("-", name.strip().lower()).strip("-")[:100]
    if not slug:
        raise InvalidInput("agent_id (or a name to derive it from) is required")
    return slug


class AgentsService:
    def __init__(
        self,
        *,
        commands: Commands,
        read: ReadModel,
        rw: ReadYourWrites,
        agents: Projector,
        activity: AgentActivity | None = None,
    ) -> None:
        self.commands = commands
        self.read = read
        self.rw = rw
        self.projector = agents
        #: tasks in flight and last beats, folded from the heartbeats (None: not followed)
        self.activity = activity

    async def list(self, caller: Principal, *, active_only: bool = False) -> AgentList:
        rows = await self.read.agents(active_only=active_only)
        shown = [a for a in rows if visible(caller.caller, Action.AGENT_READ, a["owner"])]
        return AgentList(agents=[self._view(a) for a in shown])

    async def get(self, caller: Principal, agent_id: str) -> AgentView:
        return self._view(await self._find(caller, Action.AGENT_READ, agent_id))

    def _view(self, row: AgentRow) -> AgentView:
        if self.activity is None:
            return AgentView.of(row)
        return AgentView.of(row, self.activity.of(row["agent_id"], datetime.now(UTC)))

    async def _find(self, caller: Principal, action: Action, agent_id: str) -> AgentRow:
        row = await self.read.agent(agent_id)
        if row is None or check(caller.caller, action, row["owner"]) is HIDDEN:
            raise NotFound(f"agent {agent_id!r} not found", code="AGENT_NOT_FOUND")
        return row

    async def register(self, caller: Principal, info: AgentInfo) -> tuple[AgentView, bool]:
        """Register (or update) for the caller; ``True`` when the catalogue shows it already.
        An id keeps its owner forever, deregistered or not: another's is 409."""
        entry = await self.read.agent_entry(info.agent_id)
        owner = entry["owner"] if entry is not None else (caller.owner or SYSTEM)
        if entry is not None and check(caller.caller, Action.AGENT_WRITE, owner) is HIDDEN:
            raise Conflict(
                f"agent id {info.agent_id!r} belongs to another owner", code="AGENT_ID_TAKEN"
            )
        request_id = new_request_id()
        cmd = RegisterAgent.build(
            actor=caller.actor, tenant_id=owner, agent=info, owner=owner, request_id=request_id
        )
        if not await self._ask(info.agent_id, cmd, request_id):
            pending = info.model_dump(mode="json")
            pending.update(
                type=info.agent_type,
                configuration=info.metadata.get("configuration", {}),
                status="registering",
                active=False,
                owner=owner,
            )
            return AgentView.model_validate(pending), False
        return await self.get(caller, info.agent_id), True

    async def deregister(self, caller: Principal, agent_id: str) -> AgentRemoved:
        row = await self._find(caller, Action.AGENT_DELETE, agent_id)
        request_id = new_request_id()
        cmd = DeregisterAgent.build(
            actor=caller.actor,
            tenant_id=row["owner"],
            agent_id=agent_id,
            owner=None if caller.admin else caller.owner,
            request_id=request_id,
        )
        done = await self._ask(agent_id, cmd, request_id)
        return AgentRemoved(agent_id=agent_id, status="deregistered" if done else "deregistering")

    async def _ask(
        self, agent_id: str, cmd: RegisterAgent | DeregisterAgent, request_id: str
    ) -> bool:
        """Send to the registry and wait for its answer (a refusal is raised) and for this
        replica's read model; ``False`` when the registry does not answer in time."""
        fut = self.commands.replies.expect(request_id)
        try:
            await self.commands.publish_for_reply(topics.REGISTRY_REQUESTS, agent_id, cmd)
            try:
                async with asyncio.timeout(REGISTRY_WAIT_S):
                    reply = await fut
                    if not reply.data.ok:
                        raise from_reply(reply.data.error_code, reply.data.message)
                    await self.rw.event(self.projector, "agent_cmd", str(cmd.message_id))
            except TimeoutError:
                return False
        finally:
            self.commands.replies.forget(request_id)
        return True
