"""The agent catalogue as a pure state machine.

Registration and deregistration come as commands; liveness comes from heartbeats. Each
change emits the agent's whole catalogue entry, so the compacted ``spine.registry.events``
keeps exactly the current state per agent and a replayed command is harmless.

Liveness comes only from beats: a Kafka agent's own, and for an HTTP agent the relay's,
one per health probe, naming the endpoint it probed. An agent is *active* while it is
registered and its beats (ready) arrive within the TTL. A registration is no evidence: a
new one waits (not active, ``last_seen`` none) for its first beat — the bus agent's first
heartbeat, the HTTP agent's first probe — and so does one that moves the agent elsewhere
(another endpoint, another transport: :func:`same_place`), even if it was active. A
re-registration in the same place keeps the liveness it had. A beat about another place
than the agent's registered one (a probe of the old endpoint that was in flight when the
agent was re-pointed) is stale and changes nothing. The first beat after a registration
records the verdict either way, so "waiting" becomes "inactive" when the first probe
fails; after that an entry changes only when ``ready`` does.

Ownership (DESIGN §12): every entry has an owner, ``system`` or a user id, and keeps it
when deregistered, so an agent id never passes to another owner. ``RegisterAgent`` with an
owner (the gateway, for its principal) is refused on an id another owner holds —
``NOT_OWNER`` on a system agent, ``AGENT_ID_TAKEN`` on another user's; without one (an
agent registering itself over the bus) it keeps the entry's owner, ``system`` when new.
``DeregisterAgent`` with an owner must come from the agent's owner; without one (the
admin, or the agent itself) it is allowed.

Keys (DESIGN §12, docs/security.md): the operator's ``IssueAgent`` (``spine-admin``, on
``spine.registry.admin``) records the agent's public key, and its owner when it names one
— creating an unregistered entry for an id not seen yet, refused (like a gateway
registration) when it names another owner than the entry's. ``RevokeAgentKey`` forgets
the key and marks the agent inactive at once: nothing it signs is accepted any more.
Registrations keep the key; nothing but these two commands changes it. Whose key an
agent's own message must carry is :mod:`.authenticity`'s decision, checked before the
message reaches the catalogue. A refusal raises :class:`RegistrationRefused`
with its code; :func:`accepted` and :func:`refused` say what goes with a decision — the
``AuditRecorded`` of a change (and of a refused gateway command) and the gateway's answer.

Duplicates: every entry names the input that caused it (``causation_id``), and the
catalogue remembers those ids — from the entries it loads and the ones it emits —
together with the ids of the commands it decided since. A command whose ``message_id`` is
among them is a duplicate (a redelivery after a crash, or the same message published
twice) and changes nothing. The record of a command's processing is thus its own effect,
the entry on the log. Heartbeats only flip ``active`` on a change (or record the first
verdict after a registration), so a replayed beat is harmless; they are best-effort
liveness. An audit record's id derives from its command's, so the one of a command handled
twice is recognisable too.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final

from spine_contracts import (
    AgentDeregistered,
    AgentHeartbeat,
    AgentInfo,
    AgentRegistered,
    AgentStatusChanged,
    AuditRecorded,
    DeregisterAgent,
    GatewayReply,
    IssueAgent,
    Message,
    RegisterAgent,
    RevokeAgentKey,
)
from spine_contracts.access import SYSTEM
from spine_contracts.agent_rules import registration_problem
from spine_contracts.signing import decode_public_key, key_id

from .errors import RegistrationRefused, RegistryErrorCode

Entry = AgentRegistered | AgentStatusChanged | AgentDeregistered
Command = RegisterAgent | DeregisterAgent | IssueAgent | RevokeAgentKey
#: How many handled command ids the catalogue remembers (duplicates come close together).
REMEMBER_INPUTS = 100_000
#: Namespace of the audit records' ids (see :func:`audit_id`).
AUDIT_IDS: Final = uuid.UUID("9b2e7c41-6d0a-4f3b-b8e5-2a7d14c0f963")


@dataclass
class AgentRecord:
    info: AgentInfo
    registered: bool
    active: bool
    #: the last beat about the agent's registered place; ``None``: none since it was
    #: registered there (waiting for its first heartbeat or probe)
    last_seen: datetime | None = None
    owner: str = SYSTEM
    #: base64 of the raw Ed25519 public key ``spine-admin`` issued, and its key id
    public_key: str | None = None
    key_id: str | None = None

    @property
    def raw_public_key(self) -> bytes | None:
        return decode_public_key(self.public_key) if self.public_key else None


@dataclass
class Catalog:
    agents: dict[str, AgentRecord] = field(default_factory=dict)
    #: handled command id -> the agent it was about (so a partition's ids can be dropped)
    handled: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def load(self, event: Message, now: datetime) -> None:
        """Fold a catalogue event read back from the log; liveness gets a fresh grace period."""
        if isinstance(event, (AgentRegistered, AgentStatusChanged, AgentDeregistered)):
            d = event.data
            self.agents[d.agent.agent_id] = AgentRecord(
                d.agent,
                d.registered,
                d.active,
                now if d.active else d.last_seen,
                d.owner,
                d.public_key,
                d.key_id,
            )
            if event.causation_id:
                self._remember(event.causation_id, d.agent.agent_id)

    def forget(self, which: Callable[[str], bool]) -> None:
        """Drop the agents ``which`` selects, and the ids of their handled commands, before
        they are loaded again from the log (whatever was decided since and not written is
        then decided again)."""
        self.agents = {a: r for a, r in self.agents.items() if not which(a)}
        for message_id in [m for m, a in self.handled.items() if which(a)]:
            del self.handled[message_id]

    def is_duplicate(self, message: Message) -> bool:
        return str(message.message_id) in self.handled

    def _remember(self, message_id: str, agent_id: str) -> None:
        self.handled[message_id] = agent_id
        self.handled.move_to_end(message_id)
        while len(self.handled) > REMEMBER_INPUTS:
            self.handled.popitem(last=False)

    def decide(self, message: Message, now: datetime) -> list[Entry]:
        """The entries an input causes; nothing for a duplicate of a handled command.
        Raises :class:`RegistrationRefused` for a command it does not accept."""
        if isinstance(message, Command):
            if self.is_duplicate(message):
                return []
            entries = self._decide(message, now)
            self._remember(str(message.message_id), agent_of(message))
            return entries
        return self._decide(message, now)

    def _decide(self, message: Message, now: datetime) -> list[Entry]:
        if isinstance(message, RegisterAgent):
            return self._register(message, now)
        if isinstance(message, DeregisterAgent):
            return self._deregister(message, now)
        if isinstance(message, AgentHeartbeat):
            return self._beat(message, now)
        if isinstance(message, IssueAgent):
            return self._issue(message)
        if isinstance(message, RevokeAgentKey):
            return self._revoke(message)
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
            owner=rec.owner,
            public_key=rec.public_key,
            key_id=rec.key_id,
        )

    def _register(self, cmd: RegisterAgent, now: datetime) -> list[Entry]:
        info = cmd.data.agent
        check_registration(info)
        old = self.agents.get(info.agent_id)
        owner = _registering_owner(info.agent_id, old, cmd.data.owner)
        if old is not None and old.registered and old.info == info:
            return []  # same registration again (an SDK restart): nothing changed
        rec = AgentRecord(info, True, False, None, owner)
        # a registration proves nothing about a process: what vouched for the agent where
        # it was still does if it stays there; anywhere else it waits for its first beat
        stays = False
        if old is not None:  # only spine-admin's commands change the key
            rec.public_key, rec.key_id = old.public_key, old.key_id
            stays = old.registered and same_place(old.info, info)
            if stays:
                rec.active, rec.last_seen = old.active, old.last_seen
        self.agents[info.agent_id] = rec
        reason = "registered" if stays else f"registered: {awaiting(info)}"
        return [self._emit(AgentRegistered, rec, cmd, reason)]

    def _issue(self, cmd: IssueAgent) -> list[Entry]:
        d = cmd.data
        old = self.agents.get(d.agent_id)
        owner = _issuing_owner(d.agent_id, old, d.owner)
        kid = key_id(decode_public_key(d.public_key))
        if old is None:
            rec = AgentRecord(AgentInfo(agent_id=d.agent_id), False, False, owner=owner)
        elif old.public_key == d.public_key and old.owner == owner:
            return []  # issued again with the same key: nothing changed
        else:
            rec = replace(old)
        rec.owner, rec.public_key, rec.key_id = owner, d.public_key, kid
        self.agents[d.agent_id] = rec
        return [self._emit(AgentStatusChanged, rec, cmd, f"key {kid} issued")]

    def _revoke(self, cmd: RevokeAgentKey) -> list[Entry]:
        old = self.agents.get(cmd.data.agent_id)
        if old is None or old.public_key is None:
            return []
        rec = replace(old, public_key=None, key_id=None, active=False)
        self.agents[cmd.data.agent_id] = rec
        return [self._emit(AgentStatusChanged, rec, cmd, f"key {old.key_id} revoked")]

    def _deregister(self, cmd: DeregisterAgent, now: datetime) -> list[Entry]:
        rec = self.agents.get(cmd.data.agent_id)
        asked = cmd.data.owner
        if rec is not None and asked is not None and asked != rec.owner:
            if rec.owner == SYSTEM:
                raise RegistrationRefused(
                    f"agent {cmd.data.agent_id!r} is a system agent: only the admin deregisters it",
                    RegistryErrorCode.NOT_OWNER,
                )
            raise RegistrationRefused(
                f"agent {cmd.data.agent_id!r} not found", RegistryErrorCode.AGENT_NOT_FOUND
            )
        if rec is None or not rec.registered:
            return []
        rec = replace(rec, registered=False, active=False)
        self.agents[cmd.data.agent_id] = rec
        return [self._emit(AgentDeregistered, rec, cmd, "deregistered")]

    def _beat(self, beat: AgentHeartbeat, now: datetime) -> list[Entry]:
        rec = self.agents.get(beat.data.agent_id)
        if rec is None or not rec.registered:
            return []  # a beat does not register an agent
        if not vouches_for(beat, rec.info):
            return []  # about where the agent was before it was re-registered: stale
        first = rec.last_seen is None
        rec.last_seen = now
        if rec.active == beat.data.ready and not first:
            return []
        rec.active = beat.data.ready
        return [self._emit(AgentStatusChanged, rec, beat, beat_reason(beat))]

    def sweep(
        self, now: datetime, ttl: timedelta, owned: Callable[[str], bool] = lambda _a: True
    ) -> list[Entry]:
        """Mark inactive every active agent whose last beat is older than ``ttl``, among
        those ``owned`` selects (the agents whose beats this replica receives)."""
        out: list[Entry] = []
        for agent_id, rec in self.agents.items():
            if not owned(agent_id):
                continue
            if rec.active and (rec.last_seen is None or now - rec.last_seen > ttl):
                rec.active = False
                seconds = ttl.total_seconds()
                out.append(
                    self._emit(AgentStatusChanged, rec, None, f"no heartbeat for {seconds:g}s")
                )
        return out


def same_place(old: AgentInfo, new: AgentInfo) -> bool:
    """Whether what showed ``old`` alive shows ``new`` alive too: the same transport and,
    for an HTTP agent, the same endpoint (its probes are of that endpoint)."""
    if old.transport != new.transport:
        return False
    return new.transport != "http" or old.endpoint == new.endpoint


def vouches_for(beat: AgentHeartbeat, info: AgentInfo) -> bool:
    """Whether ``beat`` is about the agent as registered in ``info``: its transport, and
    for an HTTP agent a probe of its endpoint (a beat naming none names no endpoint)."""
    if beat.data.transport != info.transport:
        return False
    return info.transport != "http" or beat.data.endpoint == info.endpoint


def awaiting(info: AgentInfo) -> str:
    """What a registered agent that is not known alive yet waits for."""
    if info.transport == "http":
        return f"waiting for a successful probe of {info.endpoint}"
    return "waiting for its first heartbeat"


def beat_reason(beat: AgentHeartbeat) -> str:
    if beat.data.ready:
        return "heartbeat: ready"
    why = beat.data.reason
    return f"heartbeat: not ready ({why})" if why else "heartbeat: not ready"


def check_registration(info: AgentInfo) -> None:
    """Raise :class:`RegistrationRefused` when ``info`` cannot be served as given."""
    problem = registration_problem(info)
    if problem is not None:
        raise RegistrationRefused(problem)


def agent_of(command: Command) -> str:
    if isinstance(command, RegisterAgent):
        return command.data.agent.agent_id
    return command.data.agent_id


def request_id_of(command: Command) -> str | None:
    """The gateway request a command answers (``None``: an agent's, or ``spine-admin``'s)."""
    if isinstance(command, RegisterAgent | DeregisterAgent):
        return command.data.request_id
    return None


def _issuing_owner(agent_id: str, old: AgentRecord | None, asked: str | None) -> str:
    """The owner an ``IssueAgent`` leaves the entry with: an id never passes to another
    owner, not even by the operator's hand (the tombstone keeps the owner, DESIGN §12)."""
    if asked is None:
        return old.owner if old is not None else SYSTEM
    if old is None or old.owner == asked:
        return asked
    raise RegistrationRefused(
        f"agent {agent_id!r} belongs to {old.owner!r}, not {asked!r}: an agent id never "
        "passes to another owner",
        RegistryErrorCode.AGENT_ID_TAKEN,
    )


def _registering_owner(agent_id: str, old: AgentRecord | None, asked: str | None) -> str:
    """The owner a registration leaves the entry with, or why it may not touch it."""
    if asked is None:  # the agent itself, over the bus: it cannot change its owner
        return old.owner if old is not None else SYSTEM
    if old is None or old.owner == asked:
        return asked
    if old.owner == SYSTEM:
        raise RegistrationRefused(
            f"agent {agent_id!r} is a system agent: only the admin changes it",
            RegistryErrorCode.NOT_OWNER,
        )
    raise RegistrationRefused(
        f"agent id {agent_id!r} belongs to another owner", RegistryErrorCode.AGENT_ID_TAKEN
    )


# --- what goes with a decision: the audit record and the gateway's answer ------------------


@dataclass(frozen=True)
class Outcome:
    """The records that go with a command's entries, in the same transaction."""

    audit: tuple[AuditRecorded, ...] = ()
    reply: GatewayReply | None = None


def accepted(command: Command, entries: Sequence[Entry], record: AgentRecord | None) -> Outcome:
    """After ``Catalog.decide`` accepted ``command`` (``record``: the agent's entry now).

    A change is audited; the gateway gets ok with the entry — or ``AGENT_NOT_FOUND`` for
    deregistering an agent that was never registered (nothing changes, nothing audited).
    """
    agent_id = agent_of(command)
    if record is None:
        reason = f"agent {agent_id!r} not found"
        reply = _reply(
            command, False, {"agent_id": agent_id}, RegistryErrorCode.AGENT_NOT_FOUND, reason
        )
        return Outcome(reply=reply)
    audit: tuple[AuditRecorded, ...] = ()
    if entries and isinstance(command, IssueAgent | RevokeAgentKey):
        action = "agent.key_issued" if isinstance(command, IssueAgent) else "agent.key_revoked"
        audit = (_audit(command, action, record.owner, key_id=record.key_id),)
    elif entries:
        action = "agent.registered" if isinstance(command, RegisterAgent) else "agent.deregistered"
        info = record.info
        audit = (
            _audit(
                command,
                action,
                record.owner,
                transport=info.transport,
                endpoint=info.endpoint,
                agent_type=info.agent_type,
                version=info.version,
                request_id=request_id_of(command),
            ),
        )
    body: dict[str, Any] = {
        "agent_id": agent_id,
        "owner": record.owner,
        "registered": record.registered,
        "changed": bool(entries),
    }
    return Outcome(audit=audit, reply=_reply(command, True, body))


def refused(command: Command, error: RegistrationRefused) -> Outcome:
    """After ``command`` was refused: a gateway command's refusal is audited and answered,
    the operator's is audited; an agent's own registration only shows in the log and the
    dead letter."""
    request_id = request_id_of(command)
    if request_id is None and not isinstance(command, IssueAgent):
        return Outcome()
    agent_id = agent_of(command)
    owner = (
        command.data.owner
        if isinstance(command, IssueAgent | RegisterAgent | DeregisterAgent)
        else None
    )
    audit = _audit(
        command,
        "agent.refused",
        owner or SYSTEM,
        command=command.type,
        code=error.code,
        reason=str(error),
        request_id=request_id,
    )
    reply = _reply(command, False, {"agent_id": agent_id}, error.code, str(error))
    return Outcome(audit=(audit,), reply=reply)


def answered_again(command: Command, record: AgentRecord | None) -> Outcome:
    """A command handled before (its change is on the log): its answer again, nothing else."""
    if record is None:
        return Outcome()
    body = {
        "agent_id": agent_of(command),
        "owner": record.owner,
        "registered": record.registered,
        "changed": False,
        "repeated": True,
    }
    return Outcome(reply=_reply(command, True, body))


def audit_id(command: Message, action: str) -> uuid.UUID:
    """The audit record's id: one per (command, action), so a repeat is recognisable."""
    return uuid.uuid5(AUDIT_IDS, f"{command.message_id}|{action}")


def _audit(cmd: Command, action: str, owner: str, **detail: Any) -> AuditRecorded:
    record = AuditRecorded.build(
        cause=cmd,
        subject="agent",
        subject_id=agent_of(cmd),
        action=action,
        owner=owner,
        detail={k: v for k, v in detail.items() if v is not None},
    )
    return record.model_copy(update={"message_id": audit_id(cmd, action)})


def _reply(
    cmd: Command,
    ok: bool,
    body: dict[str, Any],
    code: str | None = None,
    message: str | None = None,
) -> GatewayReply | None:
    request_id = request_id_of(cmd)
    if request_id is None:
        return None  # an agent's own registration, the operator's command: nobody waits
    return GatewayReply.build(
        cause=cmd,
        request_id=request_id,
        ok=ok,
        error_code=code,
        message=message,
        body=body,
    )
