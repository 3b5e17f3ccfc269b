"""Users, key hashes and credits: commands and events keyed by user_id.

Only SHA-256 hashes of API keys ever appear here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from ..access import Role, Scope
from ..envelope import Body, Message
from ..flow import FlowDefinition

KeyHash = str  # hex SHA-256 of the key
KeyId = str  # ``key_`` + 16 hex characters; never derived from the secret
ExecutionOutcome = Literal["completed", "failed", "cancelled"]

# --- commands (spine.auth.commands) --------------------------------------------------------


class CreateUserData(Body):
    user_id: str
    email: str
    name: str = ""
    organization: str = ""
    credits: int = Field(default=0, ge=0)
    rate_limit: int = Field(default=60, ge=1)
    key_hash: KeyHash = Field(min_length=64, max_length=64)
    last4: str = Field(default="", max_length=4)
    #: executions running at once (DESIGN §16); ``None``: auth's default
    max_in_flight: int | None = Field(default=None, ge=1, le=1_000_000)
    #: executions accepted and waiting for a slot; ``None``: auth's default
    max_queued: int | None = Field(default=None, ge=0, le=1_000_000)
    request_id: str | None = None


class CreateUser(Message):
    type: Literal["auth.create_user"] = "auth.create_user"
    data: CreateUserData


class RotateKeyData(Body):
    """Give the key ``key_id`` (default: the user's primary key) a new secret."""

    user_id: str
    key_hash: KeyHash = Field(min_length=64, max_length=64)
    key_id: KeyId | None = None
    last4: str = Field(default="", max_length=4)
    request_id: str | None = None


class RotateKey(Message):
    type: Literal["auth.rotate_key"] = "auth.rotate_key"
    data: RotateKeyData


class CreateKeyData(Body):
    """A further key of ``user_id`` (or, with role ``admin``, an admin key of the system
    account). The gateway checked that the acting key may mint it; auth, the single
    writer per user, enforces the cap on keys at once."""

    user_id: str
    key_id: KeyId = Field(min_length=5, max_length=40)
    key_hash: KeyHash = Field(min_length=64, max_length=64)
    name: str = Field(default="", max_length=100)
    scopes: tuple[Scope, ...] = ()
    role: Role = "user"
    expires_at: AwareDatetime | None = None
    last4: str = Field(default="", max_length=4)
    request_id: str | None = None


class CreateKey(Message):
    type: Literal["auth.create_key"] = "auth.create_key"
    data: CreateKeyData


class RevokeKeyData(Body):
    user_id: str
    key_id: KeyId
    request_id: str | None = None


class RevokeKey(Message):
    type: Literal["auth.revoke_key"] = "auth.revoke_key"
    data: RevokeKeyData


class AddCreditsData(Body):
    user_id: str
    credits: int = Field(gt=0)
    request_id: str | None = None


class AddCredits(Message):
    type: Literal["auth.add_credits"] = "auth.add_credits"
    data: AddCreditsData


class ReserveCreditsData(Body):
    """Reserve the flow's cost and, when granted, start the execution it carries."""

    user_id: str
    execution_id: str
    amount: int = Field(ge=0)
    flow: FlowDefinition
    flow_version: str
    input_data: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = None
    #: the flow's price without tokens, when ``amount`` is a priced flow's ``max_credits``
    #: (DESIGN §14); carried to the ``StartExecution`` as is
    base_credits: int | None = Field(default=None, ge=0)


class ReserveCredits(Message):
    type: Literal["auth.reserve_credits"] = "auth.reserve_credits"
    data: ReserveCreditsData


class WithdrawReservationData(Body):
    user_id: str
    execution_id: str
    request_id: str | None = None


class WithdrawReservation(Message):
    type: Literal["auth.withdraw_reservation"] = "auth.withdraw_reservation"
    data: WithdrawReservationData


class SetLimitsData(Body):
    """The admin changes a user's limits; a field left ``None`` keeps its value."""

    user_id: str
    max_in_flight: int | None = Field(default=None, ge=1, le=1_000_000)
    max_queued: int | None = Field(default=None, ge=0, le=1_000_000)
    request_id: str | None = None


class SetLimits(Message):
    type: Literal["auth.set_limits"] = "auth.set_limits"
    data: SetLimitsData


class SettleCreditsData(Body):
    user_id: str
    execution_id: str
    outcome: ExecutionOutcome
    #: what the policy asks; auth charges at most the reservation, the rest is overshoot
    charge: int = Field(ge=0)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)


class SettleCredits(Message):
    type: Literal["auth.settle_credits"] = "auth.settle_credits"
    data: SettleCreditsData


# --- events (spine.auth.events) ------------------------------------------------------------


class UserCreatedData(Body):
    user_id: str
    email: str
    name: str = ""
    organization: str = ""
    rate_limit: int
    key_hash: KeyHash
    balance: int
    last4: str = ""
    max_in_flight: int | None = None
    max_queued: int | None = None


class UserCreated(Message):
    type: Literal["auth.user_created"] = "auth.user_created"
    data: UserCreatedData


class KeyRotatedData(Body):
    user_id: str
    key_hash: KeyHash
    previous_key_hash: KeyHash
    key_id: KeyId | None = None  # None: the primary key (events written before key ids)
    last4: str = ""


class KeyRotated(Message):
    type: Literal["auth.key_rotated"] = "auth.key_rotated"
    data: KeyRotatedData


class KeyCreatedData(Body):
    user_id: str
    key_id: KeyId
    key_hash: KeyHash
    name: str = ""
    scopes: tuple[Scope, ...] = ()
    role: Role = "user"
    expires_at: AwareDatetime | None = None
    last4: str = ""


class KeyCreated(Message):
    type: Literal["auth.key_created"] = "auth.key_created"
    data: KeyCreatedData


class KeyRevokedData(Body):
    user_id: str
    key_id: KeyId
    key_hash: KeyHash


class KeyRevoked(Message):
    type: Literal["auth.key_revoked"] = "auth.key_revoked"
    data: KeyRevokedData


class CreditsAddedData(Body):
    user_id: str
    amount: int
    balance: int


class CreditsAdded(Message):
    type: Literal["auth.credits_added"] = "auth.credits_added"
    data: CreditsAddedData


class CreditsReservedData(Body):
    user_id: str
    execution_id: str
    amount: int
    balance: int
    #: the user was at ``max_in_flight``: the execution waits (credits held) for a slot
    queued: bool = False


class CreditsReserved(Message):
    type: Literal["auth.credits_reserved"] = "auth.credits_reserved"
    data: CreditsReservedData


class CreditsRejectedData(Body):
    user_id: str
    execution_id: str
    amount: int
    balance: int
    reason: str


class CreditsRejected(Message):
    type: Literal["auth.credits_rejected"] = "auth.credits_rejected"
    data: CreditsRejectedData


class ReservationWithdrawnData(Body):
    user_id: str
    execution_id: str
    refunded: int
    balance: int


class ReservationWithdrawn(Message):
    type: Literal["auth.reservation_withdrawn"] = "auth.reservation_withdrawn"
    data: ReservationWithdrawnData


class CreditsSettledData(Body):
    user_id: str
    execution_id: str
    outcome: ExecutionOutcome
    charged: int
    refunded: int
    balance: int
    input_tokens: int = 0
    output_tokens: int = 0
    #: asked beyond the reservation: recorded, never charged
    overshoot: int = 0


class CreditsSettled(Message):
    type: Literal["auth.credits_settled"] = "auth.credits_settled"
    data: CreditsSettledData


class AuthCommandRejectedData(Body):
    """A command that cannot apply (unknown user, duplicate email) is recorded with why."""

    user_id: str
    command_type: str
    reason: str
    request_id: str | None = None


class AuthCommandRejected(Message):
    type: Literal["auth.command_rejected"] = "auth.command_rejected"
    data: AuthCommandRejectedData


class ExecutionReleasedData(Body):
    """A settle freed a slot: the oldest queued execution of the user may start."""

    user_id: str
    execution_id: str


class ExecutionReleased(Message):
    type: Literal["auth.execution_released"] = "auth.execution_released"
    data: ExecutionReleasedData


class LimitsSetData(Body):
    user_id: str
    max_in_flight: int | None = None
    max_queued: int | None = None


class LimitsSet(Message):
    type: Literal["auth.limits_set"] = "auth.limits_set"
    data: LimitsSetData
