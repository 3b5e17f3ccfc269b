"""The agent catalogue as a pure state machine.

Registration and deregistration come as commands; liveness comes from heartbeats. Each
change emits the agent's whole catalogue entry, so the compacted ``spine.registry.events``
keeps exactly the current state per agent and a replayed command is harmless.
An agent is *active* while it is registered and its beats (ready) arrive within the TTL.

Duplicates: every entry names the input that caused it (``causation_id``), and the
catalogue remembers those ids — from the entries it loads at start and the ones it
emits — together with the ids of the commands it decided since. A command whose
``message_id`` is among them is a duplicate (a redelivery after a crash, or the same
message published twice) and changes nothing. The record of a command's processing is
thus its own effect, the entry on the log. Heartbeats only flip ``active`` on a change,
so a replayed beat is harmless; they are best-effort liveness.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from spine_contracts import (
    AgentDeregistered,
    AgentHeartbeat,
    AgentInfo,
    AgentRegistered,
    AgentStatusChanged,
    DeregisterAgent,
    Message,
    RegisterAgent,
)
from spine_contracts.agent_rules import registration_problem

from .errors import RegistrationRefused

Entry = AgentRegistered | AgentStatusChanged | AgentDeregistered
#: How many handled command ids the catalogue remembers (duplicates come close together).
REMEMBER_INPUTS = 100_000


@dataclass
class AgentRecord:
    info: AgentInfo
    registered: bool
    active: bool
    last_seen: datetime | None = None


@dataclass
class Catalog:
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    handled: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def load(self, event: Message, now: datetime) -> None:
        """Fold a catalogue event read back at start; liveness gets a fresh grace period."""
        if isinstance(event, (AgentRegistered, AgentStatusChanged, AgentDeregistered)):
            d = event.data
            self.agents[d.agent.agent_id] = AgentRecord(
                d.agent, d.registered, d.active, now if d.active else d.last_seen
            )
            if event.causation_id:
                self._remember(event.causation_id)

    def is_duplicate(self, message: Message) -> bool:
        return str(message.message_id) in self.handled

    def _remember(self, message_id: str) -> None:
        self.handled[message_id] = None
        self.handled.move_to_end(message_id)
        while len(self.handled) > REMEMBER_INPUTS:
            self.handled.popitem(last=False)

    def decide(self, message: Message, now: datetime) -> list[Entry]:
        """The entries an input causes; nothing for a duplicate of a handled command."""
        command = isinstance(message, (RegisterAgent, DeregisterAgent))
        if command and self.is_duplicate(message):
            return []
        entries = self._decide(message, now)
        if command:
            self._remember(str(message.message_id))
        return entries

    def _decide(self, message: Message, now: datetime) -> list[Entry]:
        if isinstance(message, RegisterAgent):
            return self._register(message, now)
        if isinstance(message, DeregisterAgent):
            return self._deregister(message, now)
        if isinstance(message, AgentHeartbeat):
            return self._beat(message, now)
        return []

    def _emit(
        self, cls: type[Entry], rec: AgentRecord, cause: Message | None, reason: str
    ) -> Entry:
        return cls.build(
            cause=cause,
            agent=rec.info,
            registered=rec.registered,
            active=rec.active,
            last_seen=rec.last_seen,
            reason=reason,
        )

    def _register(self, cmd: RegisterAgent, now: datetime) -> list[Entry]:
        info = cmd.data.agent
        check_registration(info)
        old = self.agents.get(info.agent_id)
        if old is not None and old.registered and old.info == info:
            return []  # same registration again (an SDK restart): nothing changed
        # a Kafka agent registers itself, so it is alive now; an HTTP agent registered
        # through the API waits for the relay's first successful health probe
        self_registered = info.transport == "kafka"
        active = self_registered or bool(old and old.registered and old.active)
        last_seen = now if self_registered else (old.last_seen if old else None)
        rec = AgentRecord(info, True, active, last_seen)
        self.agents[info.agent_id] = rec
        return [self._emit(AgentRegistered, rec, cmd, "registered")]

    def _deregister(self, cmd: DeregisterAgent, now: datetime) -> list[Entry]:
        rec = self.agents.get(cmd.data.agent_id)
        if rec is None or not rec.registered:
            return []
        rec = replace(rec, registered=False, active=False)
        self.agents[cmd.data.agent_id] = rec
        return [self._emit(AgentDeregistered, rec, cmd, "deregistered")]

    def _beat(self, beat: AgentHeartbeat, now: datetime) -> list[Entry]:
        rec = self.agents.get(beat.data.agent_id)
        if rec is None or not rec.registered:
            return []  # a beat does not register an agent
        rec.last_seen = now
        if rec.active == beat.data.ready:
            return []
        rec.active = beat.data.ready
        reason = "heartbeat: ready" if rec.active else "heartbeat: not ready"
        return [self._emit(AgentStatusChanged, rec, beat, reason)]

    def sweep(self, now: datetime, ttl: timedelta) -> list[Entry]:
        """Mark inactive every active agent whose last beat is older than ``ttl``."""
        out: list[Entry] = []
        for rec in self.agents.values():
            if rec.active and (rec.last_seen is None or now - rec.last_seen > ttl):
                rec.active = False
                seconds = ttl.total_seconds()
                out.append(
                    self._emit(AgentStatusChanged, rec, None, f"no heartbeat for {seconds:g}s")
                )
        return out


def check_registration(info: AgentInfo) -> None:
    """Raise :class:`RegistrationRefused` when ``info`` cannot be served as given."""
    problem = registration_problem(info)
    if problem is not None:
        raise RegistrationRefused(problem)
