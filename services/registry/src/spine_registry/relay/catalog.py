"""Which agents the relay serves, folded from ``spine.registry.events`` (pure).

An agent is served while its latest catalogue entry says registered, transport ``http``
and an endpoint. Liveness (``active``) does not matter here: tasks dispatched before an
agent went inactive still deserve a delivery attempt (or a clear error).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spine_contracts import (
    AgentDeregistered,
    AgentInfo,
    AgentRegistered,
    AgentStatusChanged,
    Message,
)


def served(info: AgentInfo, registered: bool) -> bool:
    return registered and info.transport == "http" and bool(info.endpoint)


@dataclass
class RelayCatalog:
    agents: dict[str, AgentInfo] = field(default_factory=dict)

    def apply(self, message: Message) -> bool:
        """Fold one catalogue event; True when the set of served agents changed."""
        if not isinstance(message, (AgentRegistered, AgentStatusChanged, AgentDeregistered)):
            return False
        d = message.data
        agent_id = d.agent.agent_id
        registered = d.registered and not isinstance(message, AgentDeregistered)
        if served(d.agent, registered):
            if self.agents.get(agent_id) == d.agent:
                return False
            self.agents[agent_id] = d.agent
            return True
        return self.agents.pop(agent_id, None) is not None
