"""The envelope every message travels in (docs/guarantees.md, Per topic).

A concrete message subclasses :class:`Message`, fixes ``type`` with a ``Literal`` and
types ``data`` with its body model. ``build`` creates one from body fields and an
optional cause, so correlation, tenant and trace propagate without boilerplate.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator


def utcnow() -> datetime:
    return datetime.now(UTC)


class Body(BaseModel):
    """Base of every message body: frozen, no unknown fields, finite floats only."""

    # orjson writes NaN and infinities as null, so they could not survive the round trip.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Message(BaseModel):
    """Envelope fields shared by every message; ``message_id`` is the idempotency key."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    #: Current schema version written by this code; readers upcast older ones.
    VERSION: ClassVar[int] = 1

    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    version: int = 1
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    correlation_id: str | None = None
    causation_id: str | None = None
    tenant_id: str | None = None
    trace: str | None = None
    #: Who acted (DESIGN §12): a key id, ``master``, or the service that decided alone;
    #: copied from the cause, so every event names the principal behind its command.
    actor: str | None = None
    data: Body

    @model_validator(mode="before")
    @classmethod
    def _default_version(cls, value: Any) -> Any:
        # Without a version the body is in the current shape; a literal default of 1 would
        # make readers upcast a current body once VERSION is bumped.
        if isinstance(value, dict) and "version" not in value:
            return {**value, "version": cls.VERSION}
        return value

    @classmethod
    def build(
        cls,
        *,
        cause: Message | None = None,
        correlation_id: str | None = None,
        tenant_id: str | None = None,
        trace: str | None = None,
        actor: str | None = None,
        **fields: Any,
    ) -> Self:
        """Create a message from its body's fields, inheriting context from ``cause``."""
        body_type = cls.model_fields["data"].annotation
        assert isinstance(body_type, type) and issubclass(body_type, Body)
        if cause is not None:
            correlation_id = correlation_id or cause.correlation_id or str(cause.message_id)
            tenant_id = tenant_id or cause.tenant_id
            trace = trace or cause.trace
            actor = actor or cause.actor
        # ``type`` is omitted on purpose: each subclass defaults it to its Literal.
        return cls(  # type: ignore[call-arg]
            version=cls.VERSION,
            correlation_id=correlation_id,
            causation_id=str(cause.message_id) if cause is not None else None,
            tenant_id=tenant_id,
            trace=trace,
            actor=actor,
            data=body_type(**fields),
        )
