"""Changes to the shared catalogues, kept forever on ``spine.audit`` (key: the subject's id).

Written in the same transaction as the flow or agent change it records, so the audit view
(projected from forever topics only) can be rebuilt and never ages out with the 7-day
command topics. Auth and execution events carry their actor themselves.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..envelope import Body, Message

AuditSubject = Literal["flow", "agent"]


class AuditRecordedData(Body):
    subject: AuditSubject
    subject_id: str
    #: what happened, e.g. ``flow.created``, ``flow.replaced``, ``flow.deleted``,
    #: ``flow.refused``, ``agent.registered``, ``agent.deregistered``, ``agent.refused``
    action: str
    owner: str
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditRecorded(Message):
    type: Literal["audit.recorded"] = "audit.recorded"
    data: AuditRecordedData
