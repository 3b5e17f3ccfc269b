"""The orchestrator's view of the agent catalogue, folded from ``spine.registry.events``.

Pure: :meth:`AgentCatalog.apply` takes one registry event; :meth:`availability` and
:meth:`owner` answer what :class:`~spine_orchestrator.domain.Environment` asks (whether a
node can be dispatched, and whether the execution's user may use the agent at all), and
:meth:`signing_key` whose key a result from the agent must be signed with. The Kafka
adapter feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from spine_contracts import AgentDeregistered, AgentRegistered, AgentStatusChanged, Message
from spine_contracts.access import SYSTEM
from spine_contracts.signing import RELAY_SIGNER, decode_public_key

from .domain import AgentAvailability


@dataclass(frozen=True)
class AgentView:
    registered: bool
    active: bool
    transport: str
    owner: str = SYSTEM
    #: the raw Ed25519 public key ``spine-admin`` issued; ``None``: not issued, or revoked
    public_key: bytes | None = None
    #: tasks it takes at once over all its replicas; ``None``: no cap
    concurrency: int | None = None


class AgentCatalog:
    def __init__(self) -> None:
        self._agents: dict[str, AgentView] = {}

    def apply(self, message: Message) -> str | None:
        """Fold one registry event; the agent's id when it became able to take more work
        (active again, or a larger ``concurrency``), so waiting nodes can be woken."""
        if not isinstance(message, (AgentRegistered, AgentStatusChanged, AgentDeregistered)):
            return None
        d = message.data
        agent_id = d.agent.agent_id
        registered = d.registered and not isinstance(message, AgentDeregistered)
        before = self._agents.get(agent_id)
        view = self._agents[agent_id] = AgentView(
            registered=registered,
            active=registered and d.active,
            transport=d.agent.transport,
            owner=d.owner,
            public_key=decode_public_key(d.public_key) if d.public_key else None,
            concurrency=d.agent.concurrency,
        )
        if not view.active:
            return None
        if before is None or not before.active or _more_room(before, view):
            return agent_id
        return None

    def availability(self, agent_id: str) -> AgentAvailability:
        view = self._agents.get(agent_id)
        if view is None:
            return "unknown"
        if not view.registered:
            return "deregistered"
        return "active" if view.active else "inactive"

    def concurrency(self, agent_id: str) -> int | None:
        view = self._agents.get(agent_id)
        return view.concurrency if view is not None else None

    def owner(self, agent_id: str) -> str | None:
        """The agent's owner (kept by a deregistration too); ``None`` for an unknown agent."""
        view = self._agents.get(agent_id)
        return view.owner if view is not None else None

    def signing_key(self, agent_id: str) -> tuple[str, bytes | None]:
        """Who signs for ``agent_id`` and with which key: the agent itself, or the relay
        for an HTTP agent; the key is ``None`` when none is issued (or it is revoked)."""
        view = self._agents.get(agent_id)
        signer = RELAY_SIGNER if view is not None and view.transport == "http" else agent_id
        if signer != agent_id:
            view = self._agents.get(signer)
        return signer, view.public_key if view is not None else None

    def __len__(self) -> int:
        return len(self._agents)


def _more_room(before: AgentView, after: AgentView) -> bool:
    if after.concurrency is None:
        return before.concurrency is not None
    return before.concurrency is not None and after.concurrency > before.concurrency
