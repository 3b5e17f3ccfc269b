"""Agent catalogue: commands, compacted catalogue events and heartbeats (key agent_id)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from ..access import SYSTEM
from ..envelope import Body, Message

AgentTransport = Literal["kafka", "http"]


class AgentInfo(Body):
    agent_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    name: str = ""
    description: str = ""
    endpoint: str | None = None
    capabilities: tuple[str, ...] = ()
    agent_type: str = "processor"
    transport: AgentTransport = "kafka"
    version: str = "1.0.0"
    rate_limit: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class RegisterAgentData(Body):
    agent: AgentInfo
    #: ``system`` or a user id when the gateway registers for a principal; ``None`` for an
    #: agent's own registration over the bus, which keeps the entry's owner (or ``system``)
    owner: str | None = None
    request_id: str | None = None


class RegisterAgent(Message):
    type: Literal["registry.register_agent"] = "registry.register_agent"
    data: RegisterAgentData


class DeregisterAgentData(Body):
    agent_id: str
    #: the deregistering user, who must own the agent; ``None``: the admin or the agent itself
    owner: str | None = None
    request_id: str | None = None


class DeregisterAgent(Message):
    type: Literal["registry.deregister_agent"] = "registry.deregister_agent"
    data: DeregisterAgentData


class AgentCatalogEntryData(Body):
    """The whole entry, so the compacted topic's last record per agent is its state."""

    agent: AgentInfo
    registered: bool = True
    active: bool = False
    last_seen: AwareDatetime | None = None
    reason: str | None = None
    #: kept by the deregistration's tombstone too: an id never passes to another owner
    owner: str = SYSTEM


class AgentRegistered(Message):
    type: Literal["registry.agent_registered"] = "registry.agent_registered"
    data: AgentCatalogEntryData


class AgentStatusChanged(Message):
    type: Literal["registry.agent_status_changed"] = "registry.agent_status_changed"
    data: AgentCatalogEntryData


class AgentDeregistered(Message):
    type: Literal["registry.agent_deregistered"] = "registry.agent_deregistered"
    data: AgentCatalogEntryData


class AgentHeartbeatData(Body):
    agent_id: str
    instance_id: str
    transport: AgentTransport = "kafka"
    ready: bool = True
    in_flight: int = 0
    capabilities: tuple[str, ...] = ()
    version: str = "1.0.0"


class AgentHeartbeat(Message):
    type: Literal["registry.agent_heartbeat"] = "registry.agent_heartbeat"
    data: AgentHeartbeatData
