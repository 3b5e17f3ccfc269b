"""The flow catalogue's single writer as a pure state machine (DESIGN §4, §12).

Every write to the catalogue — the API's, sent by the gateway, and the flow files', sent by
the orchestrator's loader — is a command on ``spine.flows.commands`` (one partition, key
flow_id). Deciding them here, one after the other, is what keeps two writers from racing
for a flow id: the gateway's read model and the loader's view of ``spine.flows`` can both
be stale, this state cannot, because only this writer produces ``spine.flows``.

``decide(catalog, command)`` returns a :class:`Decision`: the ``FlowDefined``/``FlowDeleted``
to write, the ``AuditRecorded`` that goes with it (or with the refusal) and the gateway's
answer. ``evolve`` folds one ``spine.flows`` record into the catalogue; the adapter applies
a decision's events with it, and rebuilds the catalogue by folding the whole topic, so the
state decided on is always the fold of the log. No I/O, no clock: stdlib and contracts.

Rules, for a command of owner O on flow id F (the current definition of F owned by P):

* ``DefineFlow`` mode ``create``: F free (never defined, or deleted) → defined for O;
  F live → refused ``FLOW_EXISTS``.
* ``DefineFlow`` mode ``replace``: F free → defined for O; P = O → replaced (same
  version, source and path → nothing to write, answered ok); P ≠ O → refused: a flow
  file may take only a free or system id (``FLOW_ID_TAKEN``), an API write on a system
  flow is ``NOT_OWNER``, on another user's flow ``FLOW_ID_TAKEN``.
* ``DeleteFlow``: F free → ``FLOW_NOT_FOUND``; a file's deletion removes F only while F's
  definition came from that file (``FLOW_NOT_FROM_FILE``); P = O → deleted, owner kept;
  a system flow of someone else → ``NOT_OWNER``; another user's flow → ``FLOW_NOT_FOUND``
  (private flows are not shown to others). The gateway decides whether the admin may
  delete a user's flow, and then sends that user's id as O.
* A definition whose ``flow_id`` differs from the command's → ``INVALID_FLOW``.

Every accepted change and every refusal has an ``AuditRecorded`` (``flow.created``,
``flow.replaced``, ``flow.deleted``, ``flow.refused``) with the command's actor.

Repeats: the catalogue remembers the ids of the commands whose change is on the log (the
records' ``causation_id``), so the same message again only gets its answer again, also
after a rebuild; a define identical to the current flow writes nothing. An audit record's
``message_id`` derives from its command's, so a refusal repeated carries the same id and
the audit projection keeps one.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from spine_contracts import (
    AuditRecorded,
    DefineFlow,
    DeleteFlow,
    FlowDefined,
    FlowDeleted,
    GatewayReply,
    Message,
)
from spine_contracts.access import SYSTEM
from spine_contracts.messages.flows import FlowSource

from .errors import FlowErrorCode, UnsupportedCommand

#: Command ids remembered for repeats (repeats come seconds apart, not 10 000 writes later).
HANDLED_KEPT: Final = 10_000
#: Namespace of the audit records' ids (see :func:`audit_id`).
AUDIT_IDS: Final = uuid.UUID("3f1d6a0e-93c4-4d1e-8a57-1b0c2f6e9d44")


@dataclass(frozen=True)
class FlowEntry:
    """What the writer needs of a live flow: who owns it and where it came from."""

    owner: str
    flow_version: str
    source: FlowSource
    source_path: str | None = None


@dataclass
class FlowCatalog:
    """The live flows by id, and the commands already written to the log."""

    flows: dict[str, FlowEntry] = field(default_factory=dict)
    handled: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def remember(self, message_id: str) -> None:
        self.handled[message_id] = None
        self.handled.move_to_end(message_id)
        while len(self.handled) > HANDLED_KEPT:
            self.handled.popitem(last=False)


@dataclass(frozen=True)
class Decision:
    """What one command causes: catalogue records, the audit record, the gateway's answer."""

    events: tuple[FlowDefined | FlowDeleted, ...] = ()
    audit: tuple[AuditRecorded, ...] = ()
    reply: GatewayReply | None = None
    #: the error code of a refusal (``None``: accepted or repeated)
    refused: str | None = None
    reason: str | None = None


FlowCommand = DefineFlow | DeleteFlow


def decide(catalog: FlowCatalog, command: Message) -> Decision:
    """Decide one flow command against the catalogue (which it does not change)."""
    if isinstance(command, DefineFlow):
        return _define(catalog, command)
    if isinstance(command, DeleteFlow):
        return _delete(catalog, command)
    raise UnsupportedCommand(f"the flow catalogue does not handle {command.type!r}")


def evolve(catalog: FlowCatalog, event: Message) -> None:
    """Fold one ``spine.flows`` record into the catalogue (other messages are ignored)."""
    if isinstance(event, FlowDefined):
        d = event.data
        catalog.flows[d.flow_id] = FlowEntry(d.owner, d.flow_version, d.source, d.source_path)
    elif isinstance(event, FlowDeleted):
        catalog.flows.pop(event.data.flow_id, None)
    else:
        return
    if event.causation_id:
        catalog.remember(event.causation_id)


def replay(catalog: FlowCatalog, events: Iterable[Message]) -> None:
    for event in events:
        evolve(catalog, event)


def audit_id(command: Message, action: str) -> uuid.UUID:
    """The audit record's id: one per (command, action), so a repeat is recognisable."""
    return uuid.uuid5(AUDIT_IDS, f"{command.message_id}|{action}")


# --- the rules -------------------------------------------------------------------------------


def _define(catalog: FlowCatalog, cmd: DefineFlow) -> Decision:
    d = cmd.data
    current = catalog.flows.get(d.flow_id)
    if str(cmd.message_id) in catalog.handled:
        return _answer_again(cmd, current)
    if d.definition.flow_id != d.flow_id:
        return _refuse(
            cmd,
            FlowErrorCode.INVALID_FLOW,
            f"the definition is of flow {d.definition.flow_id!r}, not {d.flow_id!r}",
        )
    if current is None:
        return _write(cmd, "flow.created", replaced=None)
    if d.mode == "create":
        return _refuse(cmd, FlowErrorCode.FLOW_EXISTS, f"flow {d.flow_id!r} already exists")
    if current.owner != d.owner:
        return _refuse(cmd, *_taken(cmd, current))
    if (current.flow_version, current.source, current.source_path) == (
        d.flow_version,
        d.source,
        d.source_path,
    ):
        # the same write again (a file touched, a PUT repeated): nothing to record
        body = _body(d.flow_id, current, replaced=current)
        return Decision(reply=_reply(cmd, True, body=body))
    return _write(cmd, "flow.replaced", replaced=current)


def _taken(cmd: DefineFlow, current: FlowEntry) -> tuple[str, str]:
    flow_id = cmd.data.flow_id
    if cmd.data.source == "file":
        return (
            FlowErrorCode.FLOW_ID_TAKEN,
            f"flow id {flow_id!r} belongs to another owner: a flow file may take only a "
            "free or system id",
        )
    if current.owner == SYSTEM:
        return (
            FlowErrorCode.NOT_OWNER,
            f"flow {flow_id!r} is a system flow: only the admin changes it",
        )
    return FlowErrorCode.FLOW_ID_TAKEN, f"flow id {flow_id!r} is taken"


def _delete(catalog: FlowCatalog, cmd: DeleteFlow) -> Decision:
    d = cmd.data
    current = catalog.flows.get(d.flow_id)
    if str(cmd.message_id) in catalog.handled:
        return _answer_again(cmd, current)
    if current is None:
        return _refuse(cmd, FlowErrorCode.FLOW_NOT_FOUND, f"flow {d.flow_id!r} not found")
    if d.source == "file" and (current.source != "file" or current.source_path != d.source_path):
        return _refuse(
            cmd,
            FlowErrorCode.FLOW_NOT_FROM_FILE,
            f"flow {d.flow_id!r} is no longer defined by {d.source_path}",
        )
    if current.owner != d.owner:
        if current.owner == SYSTEM:
            return _refuse(
                cmd,
                FlowErrorCode.NOT_OWNER,
                f"flow {d.flow_id!r} is a system flow: only the admin deletes it",
            )
        return _refuse(cmd, FlowErrorCode.FLOW_NOT_FOUND, f"flow {d.flow_id!r} not found")
    event = FlowDeleted.build(cause=cmd, flow_id=d.flow_id, source=d.source, owner=current.owner)
    audit = _audit(
        cmd,
        "flow.deleted",
        current.owner,
        source=d.source,
        source_path=d.source_path,
        flow_version=current.flow_version,
    )
    body = {**_body(d.flow_id, current), "deleted": True}
    return Decision(events=(event,), audit=(audit,), reply=_reply(cmd, True, body=body))


def _write(cmd: DefineFlow, action: str, *, replaced: FlowEntry | None) -> Decision:
    d = cmd.data
    event = FlowDefined.build(
        cause=cmd,
        flow_id=d.flow_id,
        flow_version=d.flow_version,
        definition=d.definition,
        source=d.source,
        source_path=d.source_path,
        replaced_source=replaced.source if replaced is not None else None,
        owner=d.owner,
    )
    audit = _audit(
        cmd,
        action,
        d.owner,
        source=d.source,
        source_path=d.source_path,
        mode=d.mode,
        flow_version=d.flow_version,
        replaced_source=replaced.source if replaced is not None else None,
        replaced_version=replaced.flow_version if replaced is not None else None,
    )
    entry = FlowEntry(d.owner, d.flow_version, d.source, d.source_path)
    body = _body(d.flow_id, entry, created=replaced is None, replaced=replaced)
    return Decision(events=(event,), audit=(audit,), reply=_reply(cmd, True, body=body))


def _refuse(cmd: FlowCommand, code: str, reason: str) -> Decision:
    d = cmd.data
    written: dict[str, Any] = {}
    if isinstance(cmd, DefineFlow):
        written = {"mode": cmd.data.mode, "flow_version": cmd.data.flow_version}
    audit = _audit(
        cmd,
        "flow.refused",
        d.owner,
        command=cmd.type,
        source=d.source,
        source_path=d.source_path,
        code=code,
        reason=reason,
        **written,
    )
    reply = _reply(cmd, False, code=code, message=reason, body={"flow_id": d.flow_id})
    return Decision(audit=(audit,), reply=reply, refused=code, reason=reason)


def _answer_again(cmd: FlowCommand, current: FlowEntry | None) -> Decision:
    """A command whose change is on the log already: its answer again, nothing else."""
    d = cmd.data
    body: dict[str, Any] = {"flow_id": d.flow_id, "owner": d.owner, "repeated": True}
    if isinstance(cmd, DeleteFlow):
        body["deleted"] = True
    elif current is not None:
        body = {**_body(d.flow_id, current), "repeated": True}
    return Decision(reply=_reply(cmd, True, body=body))


def _body(
    flow_id: str,
    entry: FlowEntry,
    *,
    created: bool = False,
    replaced: FlowEntry | None = None,
) -> dict[str, Any]:
    return {
        "flow_id": flow_id,
        "owner": entry.owner,
        "flow_version": entry.flow_version,
        "created": created,
        "replaced_source": replaced.source if replaced is not None else None,
    }


def _audit(cmd: FlowCommand, action: str, owner: str, **detail: Any) -> AuditRecorded:
    record = AuditRecorded.build(
        cause=cmd,
        subject="flow",
        subject_id=cmd.data.flow_id,
        action=action,
        owner=owner,
        detail={k: v for k, v in detail.items() if v is not None},
    )
    return record.model_copy(update={"message_id": audit_id(cmd, action)})


def _reply(
    cmd: FlowCommand,
    ok: bool,
    *,
    code: str | None = None,
    message: str | None = None,
    body: dict[str, Any],
) -> GatewayReply | None:
    if cmd.data.request_id is None:
        return None  # the file loader does not wait for an answer
    return GatewayReply.build(
        cause=cmd,
        request_id=cmd.data.request_id,
        ok=ok,
        error_code=code,
        message=message,
        body=body,
    )
