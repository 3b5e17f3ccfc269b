"""Agent catalogue: commands, compacted catalogue events and heartbeats (key agent_id)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from ..access import SYSTEM
from ..envelope import Body, Message

AgentTransport = Literal["kafka", "http"]
#: Agent ids: no ``.`` (DESIGN §12), so a literal ACL on ``spine.agents.<id>.tasks`` and the
#: group ``agent.<id>`` names one agent only; the same rule as ``topics.agent_tasks``.
AGENT_ID_PATTERN = r"^[A-Za-z0-9_\-]+$"
#: the canonical base64 of 32 bytes (an Ed25519 public key): 43 characters and one "="
PUBLIC_KEY_PATTERN = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"


class AgentInfo(Body):
    agent_id: str = Field(min_length=1, max_length=128, pattern=AGENT_ID_PATTERN)
    name: str = ""
    description: str = ""
    endpoint: str | None = None
    capabilities: tuple[str, ...] = ()
    agent_type: str = "processor"
    transport: AgentTransport = "kafka"
    version: str = "1.0.0"
    rate_limit: int | None = None
    #: tasks the agent takes at once over all its replicas (DESIGN §16): each orchestrator
    #: partition keeps at most ceil(concurrency / partitions) outstanding; ``None``: no cap
    concurrency: int | None = Field(default=None, ge=1, le=100_000)
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
    #: the agent's Ed25519 public key (base64 of 32 raw bytes) recorded by ``spine-admin``
    #: (:class:`IssueAgent`): what its signed messages must verify against; ``None`` when
    #: never issued or revoked. Only the admin topic sets it, never a registration.
    public_key: str | None = None
    #: ``spine_contracts.signing.key_id`` of ``public_key`` (what the ``spine-key-id``
    #: header of its messages says)
    key_id: str | None = None


class AgentRegistered(Message):
    type: Literal["registry.agent_registered"] = "registry.agent_registered"
    data: AgentCatalogEntryData


class AgentStatusChanged(Message):
    type: Literal["registry.agent_status_changed"] = "registry.agent_status_changed"
    data: AgentCatalogEntryData


class AgentDeregistered(Message):
    type: Literal["registry.agent_deregistered"] = "registry.agent_deregistered"
    data: AgentCatalogEntryData


#: the longest ``reason`` a heartbeat carries (the relay cuts its probe's verdict to it)
HEARTBEAT_REASON_CHARS = 500


class AgentHeartbeatData(Body):
    agent_id: str
    instance_id: str
    transport: AgentTransport = "kafka"
    ready: bool = True
    in_flight: int = 0
    capabilities: tuple[str, ...] = ()
    version: str = "1.0.0"
    #: the endpoint the relay probed, for an HTTP agent: the registry counts a beat only
    #: for the endpoint the agent is registered at now (not one it was re-pointed away from)
    endpoint: str | None = None
    #: why not ready, when the beat says so (the relay's probe verdict)
    reason: str | None = Field(None, max_length=HEARTBEAT_REASON_CHARS)


class AgentHeartbeat(Message):
    type: Literal["registry.agent_heartbeat"] = "registry.agent_heartbeat"
    data: AgentHeartbeatData


# --- the operator's commands (spine.registry.admin: only the operator's principal writes) ---


class IssueAgentData(Body):
    """Record an agent's public key (and, when given, its owner): from then on the agent's
    messages must be signed with the matching private key (docs/security.md)."""

    agent_id: str = Field(min_length=1, max_length=128, pattern=AGENT_ID_PATTERN)
    #: base64 of the 32 raw bytes of the agent's Ed25519 public key
    public_key: str = Field(pattern=PUBLIC_KEY_PATTERN)
    #: ``system`` or a user id; ``None`` keeps the entry's owner (``system`` for a new id)
    owner: str | None = Field(None, min_length=1, max_length=128)


class IssueAgent(Message):
    type: Literal["registry.issue_agent"] = "registry.issue_agent"
    data: IssueAgentData


class RevokeAgentKeyData(Body):
    """Forget an agent's public key: nothing it signs is accepted until it is issued again."""

    agent_id: str = Field(min_length=1, max_length=128, pattern=AGENT_ID_PATTERN)


class RevokeAgentKey(Message):
    type: Literal["registry.revoke_agent_key"] = "registry.revoke_agent_key"
    data: RevokeAgentKeyData
