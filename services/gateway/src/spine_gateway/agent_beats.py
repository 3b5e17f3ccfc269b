"""What each agent is doing now, from its heartbeats: tasks in flight, its last beat, its
live instances — shown by ``GET /agents`` (issue 19) and never stored: a beat is stale in
seconds, and every gateway replica folds the same topic.

A beat is taken only when it verifies against the key of whoever speaks for the agent — the
agent itself, or the relay for an agent whose catalogue entry says ``http`` (the entry
decides, never the beat; the registry applies the same rule): every agent may write the
heartbeats topic, so an unsigned or foreign beat could otherwise show another agent busy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from spine_contracts import (
    AgentDeregistered,
    AgentHeartbeat,
    AgentRegistered,
    AgentStatusChanged,
    Message,
)
from spine_contracts.signing import RELAY_SIGNER, check, decode_public_key


@dataclass(frozen=True)
class Activity:
    """An agent's live instances, their tasks in flight, and when it last beat."""

    tasks_in_flight: int
    instances: int
    last_heartbeat_at: datetime | None


@dataclass
class _Entry:
    transport: str = "kafka"
    public_key: bytes | None = None


@dataclass
class AgentActivity:
    """The fold: catalogue entries (transport and key) and each instance's last verified beat.
    Pure apart from the signature check."""

    stale_after_s: float
    entries: dict[str, _Entry] = field(default_factory=dict)
    relay_key: bytes | None = None
    #: agent -> instance -> (in flight, ready, when)
    beats: dict[str, dict[str, tuple[int, bool, datetime]]] = field(default_factory=dict)
    refused: int = 0

    def catalogue(self, message: Message) -> None:
        if not isinstance(message, AgentRegistered | AgentStatusChanged | AgentDeregistered):
            return
        d = message.data
        raw = decode_public_key(d.public_key) if d.public_key else None
        if d.agent.agent_id == RELAY_SIGNER:
            self.relay_key = raw
        if isinstance(message, AgentDeregistered):
            self.entries.pop(d.agent.agent_id, None)
            self.beats.pop(d.agent.agent_id, None)
            return
        self.entries[d.agent.agent_id] = _Entry(d.agent.transport, raw)

    def beat(
        self,
        message: Message,
        headers: list[tuple[str, bytes]],
        base: str,
        key: bytes | None,
        value: bytes,
    ) -> bool:
        """Fold one beat if it is signed by whoever speaks for its agent."""
        if not isinstance(message, AgentHeartbeat):
            return False
        d = message.data
        if d.agent_id not in self.entries:
            self.refused += 1
            return False
        if check(headers, base, key, value, self.signer_key(d.agent_id)) is not None:
            self.refused += 1
            return False
        self.beats.setdefault(d.agent_id, {})[d.instance_id] = (
            d.in_flight,
            d.ready,
            message.occurred_at,
        )
        return True

    def signer_key(self, agent_id: str) -> bytes | None:
        """The public key whoever speaks for ``agent_id`` signs with: the relay's for an
        HTTP agent, else the agent's own as issued (``None``: not issued, or revoked)."""
        entry = self.entries.get(agent_id)
        if entry is None:
            return None
        return self.relay_key if entry.transport == "http" else entry.public_key

    def of(self, agent_id: str, now: datetime) -> Activity:
        """The agent's live instances now (beaten within ``stale_after_s``, ready)."""
        instances = self.beats.get(agent_id, {})
        last = max((at for _, _, at in instances.values()), default=None)
        live = [
            (n, at)
            for n, ready, at in instances.values()
            if ready and (now - at).total_seconds() <= self.stale_after_s
        ]
        for instance, (_, _, at) in list(instances.items()):  # the dead age out
            if (now - at).total_seconds() > self.stale_after_s * 10:
                del instances[instance]
        return Activity(sum(n for n, _ in live), len(live), last)
