"""One user's account — key hash, credits, reservations — as a pure state machine.

``decide(account, command)`` takes the account of the command's user (``None`` if the
user does not exist) and one auth command, and returns a :class:`Decision`: the auth
events that record what happened, the execution commands to send with them
(``StartExecution`` after a reservation, ``CancelExecution`` after a withdrawal) and the
answer for the gateway. ``evolve(account, event)`` applies one auth event; the account is
always the fold of its events, and ``decide`` derives the new state by evolving over the
events it emits, so rebuilding from ``spine.auth.events`` gives exactly the state that
was decided on. No I/O, no clock, no randomness: stdlib and contracts only.

The service is the single writer per user (all of a user's commands are on one partition
and are decided in order), so a check such as "balance >= cost" never races.

Rules (the credit policy is written up in ``docs/credits.md``):

* ``CreateUser``: a new user starts with ``credits``. An existing user_id is refused with
  ``AuthCommandRejected`` (USER_EXISTS). E-mail uniqueness cannot be checked here: two
  users with one address may hash to different partitions, which no single writer sees
  together. The gateway checks its own read model before it sends ``CreateUser``; auth
  only guarantees that a user_id is created once.
* ``RotateKey`` replaces the secret of one key (``key_id``; the primary key when absent):
  ``KeyRotated`` names the previous hash.
* ``CreateKey`` adds a key (``KeyCreated``) unless the user holds
  :data:`~spine_contracts.access.MAX_KEYS_PER_USER` keys that are neither revoked nor
  expired at the command's time (``occurred_at``: the decision needs no clock). Admin keys
  (role ``admin``) belong to the ``system`` account, which exists from its first key.
* ``RevokeKey`` revokes one key of the user (``KeyRevoked``); gateways refuse it at once.
* ``AddCredits`` raises the balance.
* ``ReserveCredits``: when the balance covers the amount, ``CreditsReserved`` and a
  ``StartExecution`` embedding the flow go out together; otherwise ``CreditsRejected``.
  The balance never goes below zero.
* ``WithdrawReservation`` (the gateway's reply timed out): a held reservation is
  refunded (``ReservationWithdrawn``) and its execution cancelled; anything else only
  gets an answer.
* ``SettleCredits`` (the orchestrator, once an execution ended): the held amount is
  split into ``charged = min(charge, amount)`` and ``refunded = amount - charged``; what
  the policy asked beyond the reservation (a priced flow's tokens may cost more than
  ``max_credits``) is ``overshoot = charge - charged``, recorded on ``CreditsSettled``
  and never charged, so the balance cannot go below zero. The settle's token counts are
  added to the account's running totals. A reservation is settled or withdrawn at most
  once, so nothing is refunded (nor any token counted) twice.
* Unknown user: ``AuthCommandRejected`` (USER_NOT_FOUND).

Fair sharing (DESIGN §16), with :class:`Limits` (the service's defaults and the
partition's load) beside the account:

* A granted reservation beyond the user's ``max_in_flight`` running executions (or behind
  others already queued) is *queued*: ``CreditsReserved(queued)`` and a ``StartExecution``
  marked queued; the credits are held meanwhile. Beyond the user's ``max_queued``, or the
  partition's ``partition_queue_cap`` accepted-but-not-started executions, it is refused
  with QUEUE_FULL (the gateway's 503 with ``Retry-After``) and nothing is recorded.
* Every settle or withdrawal of a running execution frees its slot: the oldest queued one
  gets ``ExecutionReleased`` and a ``ReleaseExecution`` goes to the orchestrator. A queued
  execution cancelled (settled) or withdrawn only leaves the queue. ``SetLimits`` changes
  the user's limits (``LimitsSet``) and releases what a higher limit allows.

Idempotency, derived from the events alone so that it survives a rebuild:

* Reservations are keyed by execution_id: a repeated ``ReserveCredits`` emits nothing
  and gets the first outcome again. Settling or withdrawing a closed reservation is a
  no-op.
* Every event carries the id of the command that caused it (``causation_id``); the fold
  remembers the last :data:`HANDLED_KEPT` ``CreateUser``/``RotateKey``/``AddCredits``
  message ids per user (and those of refused ``SettleCredits``), so the same message
  delivered again emits nothing new and is answered again (``message_id`` is the
  envelope's idempotency key, docs/guarantees.md, Per topic).
* A ``CreateUser`` carrying the key hash the user was created with is the creating
  request repeated (the gateway draws a fresh random key per request), even as a new
  message; likewise a ``RotateKey`` to the current hash.

Memory stays bounded per user: open reservations are always kept, closed ones only for
the last :data:`CLOSED_KEPT` executions — enough to answer a gateway's retry, which
comes seconds later, not ten thousand executions later.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Literal, TypeAlias, get_args

from spine_contracts import (
    AddCredits,
    AuthCommandRejected,
    CancelExecution,
    CreateKey,
    CreateUser,
    CreditsAdded,
    CreditsRejected,
    CreditsReserved,
    CreditsSettled,
    ExecutionReleased,
    GatewayReply,
    KeyCreated,
    KeyRevoked,
    KeyRotated,
    LimitsSet,
    Message,
    ReleaseExecution,
    ReservationWithdrawn,
    ReserveCredits,
    RevokeKey,
    RotateKey,
    SetLimits,
    SettleCredits,
    StartExecution,
    UserCreated,
    WithdrawReservation,
)
from spine_contracts.access import MAX_KEYS_PER_USER, SYSTEM, primary_key_id

from .errors import ErrorCode, UnsupportedCommand

ReservationStatus = Literal["reserved", "withdrawn", "settled", "rejected"]
AuthCommand: TypeAlias = (
    CreateUser
    | RotateKey
    | CreateKey
    | RevokeKey
    | AddCredits
    | ReserveCredits
    | WithdrawReservation
    | SettleCredits
    | SetLimits
)
AuthEvent: TypeAlias = (
    UserCreated
    | KeyRotated
    | KeyCreated
    | KeyRevoked
    | CreditsAdded
    | CreditsReserved
    | CreditsRejected
    | ReservationWithdrawn
    | CreditsSettled
    | ExecutionReleased
    | LimitsSet
    | AuthCommandRejected
)
COMMAND_TYPES: Final[tuple[type[Message], ...]] = get_args(AuthCommand)
EVENT_TYPES: Final[tuple[type[Message], ...]] = get_args(AuthEvent)
#: The service's defaults (``SPINE_AUTH_*``; docs/credits.md, Fair sharing).
DEFAULT_MAX_IN_FLIGHT: Final = 100
DEFAULT_MAX_QUEUED: Final = 1_000
DEFAULT_PARTITION_QUEUE_CAP: Final = 10_000
#: what the gateway suggests in ``Retry-After`` when the queue is full (seconds)
QUEUE_FULL_RETRY_AFTER_S: Final = 2
#: Closed reservations remembered per user (for answering repeated commands).
CLOSED_KEPT: Final = 10_000
#: CreateUser/RotateKey/AddCredits (and refused SettleCredits) message ids kept per user.
HANDLED_KEPT: Final = 1_000
WITHDRAW_REASON: Final = "request timed out at the gateway"
#: Keys the system account (admin keys) may hold at once: one per console session.
MAX_ADMIN_KEYS: Final = 200
#: Commands whose repeats are recognised by message id (reservations: by execution_id).
_ONCE_PER_MESSAGE: Final = frozenset(
    cls.model_fields["type"].default
    for cls in (CreateUser, RotateKey, CreateKey, RevokeKey, AddCredits, SettleCredits)
)


@dataclass(frozen=True)
class KeyState:
    """One key of an account, by id: its current hash and whether it still counts."""

    key_hash: str
    expires_at: datetime | None = None
    revoked: bool = False

    def live_at(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class Reservation:
    """The credits held for one execution and what became of them."""

    amount: int
    status: ReservationStatus = "reserved"
    charged: int = 0
    refunded: int = 0
    reason: str | None = None  # why it was rejected

    @property
    def held(self) -> bool:
        return self.status == "reserved"


@dataclass(frozen=True)
class Limits:
    """What a reservation is measured against besides the account: the service's defaults
    and the partition's count of accepted-but-not-started executions."""

    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_queued: int = DEFAULT_MAX_QUEUED
    partition_queue_cap: int = DEFAULT_PARTITION_QUEUE_CAP
    partition_queued: int = 0


@dataclass
class UserAccount:
    """One user's state, the fold of that user's auth events."""

    user_id: str
    email: str
    name: str
    organization: str
    rate_limit: int
    key_hash: str
    created_key_hash: str  # recognises a repeated CreateUser after a rotation too
    balance: int
    #: execution_id -> reservation: every open one, and the last CLOSED_KEPT closed ones
    reservations: dict[str, Reservation] = field(default_factory=dict)
    #: execution ids of the closed reservations kept, oldest first
    closed: dict[str, None] = field(default_factory=dict)
    #: message_id -> accepted, of CreateUser/RotateKey/AddCredits (and refused
    #: SettleCredits), oldest first
    handled: dict[str, bool] = field(default_factory=dict)
    #: key_id -> key, the primary key (from the account's creation) included
    keys: dict[str, KeyState] = field(default_factory=dict)
    #: the user's own limits; ``None``: the service's default
    max_in_flight: int | None = None
    max_queued: int | None = None
    #: executions started and not settled or withdrawn
    in_flight: int = 0
    #: queued executions (credits held, not started), oldest first
    queue: dict[str, None] = field(default_factory=dict)
    #: model tokens of every settled execution (trusted usage only, docs/credits.md)
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def held(self) -> int:
        """Credits reserved for executions that have not been settled or withdrawn."""
        return sum(r.amount for r in self.reservations.values() if r.held)

    def copy(self) -> UserAccount:
        return replace(
            self,
            reservations=dict(self.reservations),
            closed=dict(self.closed),
            handled=dict(self.handled),
            keys=dict(self.keys),
            queue=dict(self.queue),
        )

    def in_flight_limit(self, limits: Limits) -> int:
        return self.max_in_flight if self.max_in_flight is not None else limits.max_in_flight

    def queue_limit(self, limits: Limits) -> int:
        return self.max_queued if self.max_queued is not None else limits.max_queued


@dataclass(frozen=True)
class Decision:
    """The outcome of one command: new state, events, execution commands, gateway answer."""

    state: UserAccount | None
    events: tuple[Message, ...] = ()
    commands: tuple[StartExecution | CancelExecution | ReleaseExecution, ...] = ()
    reply: GatewayReply | None = None


# --- decide ----------------------------------------------------------------------------------


def decide(account: UserAccount | None, command: Message, limits: Limits = Limits()) -> Decision:
    """Apply one auth command to the account of its user (``None``: no such user)."""
    step = _Step(account, command, limits)
    if isinstance(command, CreateUser):
        step.create_user(command)
    elif isinstance(command, RotateKey):
        step.rotate_key(command)
    elif isinstance(command, CreateKey):
        step.create_key(command)
    elif isinstance(command, RevokeKey):
        step.revoke_key(command)
    elif isinstance(command, AddCredits):
        step.add_credits(command)
    elif isinstance(command, ReserveCredits):
        step.reserve(command)
    elif isinstance(command, WithdrawReservation):
        step.withdraw(command)
    elif isinstance(command, SettleCredits):
        step.settle(command)
    elif isinstance(command, SetLimits):
        step.set_limits(command)
    else:
        raise UnsupportedCommand(f"auth does not handle {command.type!r}")
    return step.decision()


class _Step:
    """One decision in progress: the events are applied to a copy as they are emitted."""

    def __init__(self, account: UserAccount | None, command: Message, limits: Limits) -> None:
        self.original = account
        self.account = account
        self.command = command
        self.limits = limits
        self.user_id: str = command.data.user_id  # type: ignore[attr-defined]
        self.copied = False
        self.events: list[Message] = []
        self.commands: list[StartExecution | CancelExecution | ReleaseExecution] = []
        self.reply: GatewayReply | None = None

    def decision(self) -> Decision:
        return Decision(self.account, tuple(self.events), tuple(self.commands), self.reply)

    # -- effects ---------------------------------------------------------------------------

    def emit(self, cls: type[Message], **fields: Any) -> None:
        event = cls.build(cause=self.command, tenant_id=self.user_id, **fields)
        self.events.append(event)
        if self.account is not None and not self.copied:
            self.account = self.account.copy()  # the caller's state is never mutated
        self.copied = True
        self.account = _apply(self.account, event)

    def send(
        self,
        cls: type[StartExecution] | type[CancelExecution] | type[ReleaseExecution],
        **fields: Any,
    ) -> None:
        self.commands.append(cls.build(cause=self.command, tenant_id=self.user_id, **fields))

    def answer(
        self,
        ok: bool,
        *,
        error_code: str | None = None,
        message: str | None = None,
        **body: Any,
    ) -> None:
        request_id = getattr(self.command.data, "request_id", None)
        if request_id is None:
            return  # nobody waits for this command (e.g. SettleCredits)
        self.reply = GatewayReply.build(
            cause=self.command,
            tenant_id=self.user_id,
            request_id=request_id,
            ok=ok,
            error_code=error_code,
            message=message,
            body=body,
        )

    def refuse(self, code: str, reason: str) -> None:
        """Record why the command cannot apply, and tell the gateway."""
        self.emit(
            AuthCommandRejected,
            user_id=self.user_id,
            command_type=self.command.type,
            reason=reason,
            request_id=getattr(self.command.data, "request_id", None),
        )
        self.answer(False, error_code=code, message=reason, user_id=self.user_id)

    def unknown_user(self) -> None:
        self.refuse(ErrorCode.USER_NOT_FOUND, f"unknown user {self.user_id!r}")

    def seen(self) -> bool | None:
        """Whether this very message was decided before (accepted or not), if remembered."""
        if self.original is None:
            return None
        return self.original.handled.get(str(self.command.message_id))

    # -- commands --------------------------------------------------------------------------

    def create_user(self, cmd: CreateUser) -> None:
        d = cmd.data
        acc = self.account
        if acc is None:
            self.emit(
                UserCreated,
                user_id=d.user_id,
                email=d.email,
                name=d.name,
                organization=d.organization,
                rate_limit=d.rate_limit,
                key_hash=d.key_hash,
                balance=d.credits,
                max_in_flight=d.max_in_flight,
                max_queued=d.max_queued,
            )
            self._answer_account("created")
            return
        seen = self.seen()
        if seen is True or (seen is None and d.key_hash == acc.created_key_hash):
            self._answer_account("created")  # the creating request again
        elif seen is False:
            reason = f"user {d.user_id!r} already exists"
            self.answer(False, error_code=ErrorCode.USER_EXISTS, message=reason, user_id=d.user_id)
        else:
            self.refuse(ErrorCode.USER_EXISTS, f"user {d.user_id!r} already exists")

    def rotate_key(self, cmd: RotateKey) -> None:
        acc = self.account
        if acc is None:
            self.unknown_user()
            return
        key_id = cmd.data.key_id or primary_key_id(acc.user_id)
        key = acc.keys.get(key_id)
        if key is None or key.revoked:
            self._refuse_key(ErrorCode.KEY_NOT_FOUND, f"no key {key_id!r} to rotate")
            return
        if self.seen() is None and cmd.data.key_hash != key.key_hash:
            self.emit(
                KeyRotated,
                user_id=acc.user_id,
                key_hash=cmd.data.key_hash,
                previous_key_hash=key.key_hash,
                key_id=key_id,
                last4=cmd.data.last4,
            )
        self._answer_account("key_rotated", key_id=key_id)

    def create_key(self, cmd: CreateKey) -> None:
        d = cmd.data
        admin = d.role == "admin"
        if admin != (d.user_id == SYSTEM):
            reason = "admin keys belong to the system account, and only admin keys do"
            self._refuse_key(ErrorCode.INVALID_KEY_REQUEST, reason)
            return
        acc = self.account
        if acc is None and not admin:
            self.unknown_user()
            return
        existing = acc.keys.get(d.key_id) if acc is not None else None
        if existing is not None:
            if existing.key_hash == d.key_hash:  # the creating request again
                self.answer(True, **_key_body(d.user_id, d.key_id, d))
            else:
                self._refuse_key(ErrorCode.KEY_EXISTS, f"key id {d.key_id!r} is taken")
            return
        now = cmd.occurred_at
        live = sum(k.live_at(now) for k in acc.keys.values()) if acc is not None else 0
        cap = MAX_ADMIN_KEYS if admin else MAX_KEYS_PER_USER
        if live >= cap:
            reason = f"{live} keys at once is the limit: revoke one first"
            self._refuse_key(ErrorCode.KEY_LIMIT_REACHED, reason)
            return
        self.emit(
            KeyCreated,
            user_id=d.user_id,
            key_id=d.key_id,
            key_hash=d.key_hash,
            name=d.name,
            scopes=d.scopes,
            role=d.role,
            expires_at=d.expires_at,
            last4=d.last4,
        )
        self.answer(True, **_key_body(d.user_id, d.key_id, d))

    def revoke_key(self, cmd: RevokeKey) -> None:
        d = cmd.data
        acc = self.account
        key = acc.keys.get(d.key_id) if acc is not None else None
        if acc is None or key is None:
            self._refuse_key(ErrorCode.KEY_NOT_FOUND, f"no key {d.key_id!r}")
            return
        if not key.revoked:
            self.emit(KeyRevoked, user_id=acc.user_id, key_id=d.key_id, key_hash=key.key_hash)
        self.answer(True, user_id=acc.user_id, key_id=d.key_id, revoked=True)

    def _refuse_key(self, code: str, reason: str) -> None:
        """A key command that cannot apply: answered, recorded only for an existing account
        (an unknown account has no partition state to remember it in)."""
        if self.account is not None:
            self.refuse(code, reason)
        else:
            self.answer(False, error_code=code, message=reason, user_id=self.user_id)

    def add_credits(self, cmd: AddCredits) -> None:
        acc = self.account
        if acc is None:
            self.unknown_user()
            return
        if self.seen() is None:
            amount = cmd.data.credits
            self.emit(
                CreditsAdded, user_id=acc.user_id, amount=amount, balance=acc.balance + amount
            )
        self._answer_account("credits_added")

    def reserve(self, cmd: ReserveCredits) -> None:
        d = cmd.data
        acc = self.account
        if acc is None:
            self.unknown_user()
            return
        existing = acc.reservations.get(d.execution_id)
        if existing is not None:
            self._answer_reservation(d.execution_id, existing)  # a repeat: same outcome
            return
        if acc.balance >= d.amount:
            # behind others already queued too: the queue is first come, first served
            queued = bool(acc.queue) or acc.in_flight >= acc.in_flight_limit(self.limits)
            if queued and self._queue_full(acc):
                return
            self.emit(
                CreditsReserved,
                user_id=acc.user_id,
                execution_id=d.execution_id,
                amount=d.amount,
                balance=acc.balance - d.amount,
                queued=queued,
            )
            self.send(
                StartExecution,
                execution_id=d.execution_id,
                user_id=acc.user_id,
                flow=d.flow,
                flow_version=d.flow_version,
                input_data=d.input_data,
                metadata=d.metadata,
                credits_reserved=d.amount,
                base_credits=d.base_credits,
                queued=queued,
            )
        else:
            self.emit(
                CreditsRejected,
                user_id=acc.user_id,
                execution_id=d.execution_id,
                amount=d.amount,
                balance=acc.balance,
                reason=f"insufficient credits: balance {acc.balance}, cost {d.amount}",
            )
        assert self.account is not None
        self._answer_reservation(d.execution_id, self.account.reservations[d.execution_id])

    def _queue_full(self, acc: UserAccount) -> bool:
        """Refuse (QUEUE_FULL, nothing recorded) when no more may wait: the user's
        ``max_queued`` or the partition's cap. A retry later is decided afresh."""
        cap = acc.queue_limit(self.limits)
        if len(acc.queue) >= cap:
            reason = f"{len(acc.queue)} executions already wait for a slot (max_queued {cap})"
        elif self.limits.partition_queued >= self.limits.partition_queue_cap:
            reason = (
                f"{self.limits.partition_queued} accepted executions wait on this auth "
                f"partition (cap {self.limits.partition_queue_cap})"
            )
        else:
            return False
        self.answer(
            False,
            error_code=ErrorCode.QUEUE_FULL,
            message=f"too many executions waiting: {reason}; retry later",
            user_id=acc.user_id,
            retry_after=QUEUE_FULL_RETRY_AFTER_S,
        )
        return True

    def release(self) -> None:
        """Start the oldest queued executions while the user has free slots."""
        acc = self.account
        assert acc is not None
        while acc.queue and acc.in_flight < acc.in_flight_limit(self.limits):
            execution_id = next(iter(acc.queue))
            self.emit(ExecutionReleased, user_id=acc.user_id, execution_id=execution_id)
            self.send(ReleaseExecution, execution_id=execution_id, user_id=acc.user_id)
            acc = self.account
            assert acc is not None

    def set_limits(self, cmd: SetLimits) -> None:
        d = cmd.data
        acc = self.account
        if acc is None:
            self.unknown_user()
            return
        max_in_flight = d.max_in_flight if d.max_in_flight is not None else acc.max_in_flight
        max_queued = d.max_queued if d.max_queued is not None else acc.max_queued
        if (max_in_flight, max_queued) != (acc.max_in_flight, acc.max_queued):
            self.emit(
                LimitsSet, user_id=acc.user_id, max_in_flight=max_in_flight, max_queued=max_queued
            )
            self.release()
        self._answer_account("limits_set")

    def withdraw(self, cmd: WithdrawReservation) -> None:
        d = cmd.data
        acc = self.account
        if acc is None:
            self.unknown_user()
            return
        reservation = acc.reservations.get(d.execution_id)
        if reservation is None:
            self.answer(
                False,
                error_code=ErrorCode.RESERVATION_NOT_FOUND,
                message=f"no reservation for execution {d.execution_id!r}",
                user_id=acc.user_id,
                execution_id=d.execution_id,
                balance=acc.balance,
            )
            return
        if reservation.held:
            self.emit(
                ReservationWithdrawn,
                user_id=acc.user_id,
                execution_id=d.execution_id,
                refunded=reservation.amount,
                balance=acc.balance + reservation.amount,
            )
            self.send(
                CancelExecution,
                execution_id=d.execution_id,
                reason=WITHDRAW_REASON,
                requested_by="auth",
            )
            self.release()
        # Rejected, settled or already withdrawn: nothing is held, only the answer.
        assert self.account is not None
        closed = self.account.reservations[d.execution_id]
        self.answer(True, **_reservation_body(self.account, d.execution_id, closed))

    def settle(self, cmd: SettleCredits) -> None:
        d = cmd.data
        acc = self.account
        if acc is None:
            self.unknown_user()
            return
        reservation = acc.reservations.get(d.execution_id)
        if self.seen() is not None:
            return  # this very settle was refused before
        if reservation is None or reservation.status == "rejected":
            what = "no reservation" if reservation is None else "a rejected reservation"
            self.refuse(ErrorCode.RESERVATION_NOT_FOUND, f"{what} for execution {d.execution_id!r}")
            return
        if not reservation.held:
            return  # settled or withdrawn already: never charge or refund twice
        charged = min(d.charge, reservation.amount)
        refunded = reservation.amount - charged
        self.emit(
            CreditsSettled,
            user_id=acc.user_id,
            execution_id=d.execution_id,
            outcome=d.outcome,
            charged=charged,
            refunded=refunded,
            balance=acc.balance + refunded,
            input_tokens=d.input_tokens,
            output_tokens=d.output_tokens,
            overshoot=d.charge - charged,
        )
        self.release()

    # -- answers ---------------------------------------------------------------------------

    def _answer_account(self, status: str, **extra: Any) -> None:
        acc = self.account
        assert acc is not None
        self.answer(
            True,
            **extra,
            status=status,
            user_id=acc.user_id,
            email=acc.email,
            name=acc.name,
            organization=acc.organization,
            rate_limit=acc.rate_limit,
            balance=acc.balance,
            max_in_flight=acc.in_flight_limit(self.limits),
            max_queued=acc.queue_limit(self.limits),
        )

    def _answer_reservation(self, execution_id: str, reservation: Reservation) -> None:
        acc = self.account
        assert acc is not None
        body = _reservation_body(acc, execution_id, reservation)
        if reservation.status == "rejected":
            self.answer(
                False, error_code=ErrorCode.INSUFFICIENT_CREDITS, message=reservation.reason, **body
            )
        elif reservation.status == "withdrawn":
            message = (
                f"the reservation for execution {execution_id!r} was withdrawn after a gateway "
                "timeout and the execution cancelled"
            )
            self.answer(False, error_code=ErrorCode.RESERVATION_WITHDRAWN, message=message, **body)
        else:
            self.answer(True, **body)


def _key_body(user_id: str, key_id: str, d: Any) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "key_id": key_id,
        "name": d.name,
        "scopes": list(d.scopes),
        "role": d.role,
        "expires_at": d.expires_at.isoformat() if d.expires_at is not None else None,
        "last4": d.last4,
    }


def _reservation_body(
    account: UserAccount, execution_id: str, reservation: Reservation
) -> dict[str, Any]:
    return {
        "user_id": account.user_id,
        "execution_id": execution_id,
        "status": reservation.status,
        "amount": reservation.amount,
        "charged": reservation.charged,
        "refunded": reservation.refunded,
        "balance": account.balance,
        "queued": execution_id in account.queue,
    }


# --- evolve ----------------------------------------------------------------------------------


def evolve(account: UserAccount | None, event: Message) -> UserAccount | None:
    """The account after ``event`` (a new object; ``account`` is left as it was)."""
    return _apply(account.copy() if account is not None else None, event)


def replay(accounts: MutableMapping[str, UserAccount], events: Iterable[Message]) -> None:
    """Fold ``events`` (any users, log order) into ``accounts`` in place — the same fold
    as :func:`evolve`, without a copy per event, for rebuilding a partition."""
    for event in events:
        if not isinstance(event, EVENT_TYPES):
            continue
        user_id: str = event.data.user_id  # type: ignore[attr-defined]
        account = _apply(accounts.get(user_id), event)
        if account is not None:
            accounts[user_id] = account


def _apply(acc: UserAccount | None, event: Message) -> UserAccount | None:
    """Apply ``event`` to ``acc`` in place and return it (or the new account)."""
    if isinstance(event, KeyCreated) and acc is None and event.data.user_id == SYSTEM:
        acc = _system_account()
    if isinstance(event, UserCreated):
        if acc is not None:
            return acc  # the first creation wins; decide never emits a second one
        new = event.data
        acc = UserAccount(
            user_id=new.user_id,
            email=new.email,
            name=new.name,
            organization=new.organization,
            rate_limit=new.rate_limit,
            key_hash=new.key_hash,
            created_key_hash=new.key_hash,
            balance=new.balance,
            keys={primary_key_id(new.user_id): KeyState(new.key_hash)},
            max_in_flight=new.max_in_flight,
            max_queued=new.max_queued,
        )
        _remember(acc, event, accepted=True)
        return acc
    if acc is None:
        return None  # e.g. AuthCommandRejected for an unknown user: nothing to keep
    if isinstance(event, KeyRotated):
        rotated = event.data
        key_id = rotated.key_id or primary_key_id(acc.user_id)
        if key_id == primary_key_id(acc.user_id):
            acc.key_hash = rotated.key_hash
        known = acc.keys.get(key_id, KeyState(rotated.key_hash))
        acc.keys[key_id] = replace(known, key_hash=rotated.key_hash)
        _remember(acc, event, accepted=True)
    elif isinstance(event, KeyCreated):
        acc.keys[event.data.key_id] = KeyState(event.data.key_hash, event.data.expires_at)
        _remember(acc, event, accepted=True)
    elif isinstance(event, KeyRevoked):
        revoked = acc.keys.get(event.data.key_id, KeyState(event.data.key_hash))
        acc.keys[event.data.key_id] = replace(revoked, revoked=True)
        _remember(acc, event, accepted=True)
    elif isinstance(event, CreditsAdded):
        acc.balance = event.data.balance
        _remember(acc, event, accepted=True)
    elif isinstance(event, CreditsReserved):
        acc.balance = event.data.balance
        acc.reservations[event.data.execution_id] = Reservation(event.data.amount)
        if event.data.queued:
            acc.queue[event.data.execution_id] = None
        else:
            acc.in_flight += 1
    elif isinstance(event, ExecutionReleased):
        if acc.queue.pop(event.data.execution_id, 0) is None:
            acc.in_flight += 1
    elif isinstance(event, LimitsSet):
        acc.max_in_flight = event.data.max_in_flight
        acc.max_queued = event.data.max_queued
    elif isinstance(event, CreditsRejected):
        refused = event.data
        acc.reservations[refused.execution_id] = Reservation(
            refused.amount, "rejected", reason=refused.reason
        )
        _close(acc, refused.execution_id)
    elif isinstance(event, ReservationWithdrawn):
        withdrawn = event.data
        acc.balance = withdrawn.balance
        _leave(acc, withdrawn.execution_id)
        held = acc.reservations.get(withdrawn.execution_id, Reservation(withdrawn.refunded))
        acc.reservations[withdrawn.execution_id] = replace(
            held, status="withdrawn", refunded=withdrawn.refunded
        )
        _close(acc, withdrawn.execution_id)
    elif isinstance(event, CreditsSettled):
        settled = event.data
        acc.balance = settled.balance
        amount = settled.charged + settled.refunded
        _leave(acc, settled.execution_id)
        held = acc.reservations.get(settled.execution_id, Reservation(amount))
        if held.status != "settled":  # the totals, like the balance, move once per execution
            acc.input_tokens += settled.input_tokens
            acc.output_tokens += settled.output_tokens
        acc.reservations[settled.execution_id] = replace(
            held, status="settled", charged=settled.charged, refunded=settled.refunded
        )
        _close(acc, settled.execution_id)
    elif isinstance(event, AuthCommandRejected):
        if event.data.command_type in _ONCE_PER_MESSAGE:
            _remember(acc, event, accepted=False)
    return acc


def _system_account() -> UserAccount:
    """The account that holds the admin keys: no credits, no primary key."""
    return UserAccount(
        user_id=SYSTEM,
        email="",
        name="admin keys",
        organization="",
        rate_limit=1,
        key_hash="",
        created_key_hash="",
        balance=0,
    )


def _leave(acc: UserAccount, execution_id: str) -> None:
    """A held reservation closes: it leaves the queue, or frees its running slot."""
    if acc.queue.pop(execution_id, 0) is None:
        return
    held = acc.reservations.get(execution_id)
    if held is not None and held.held:
        acc.in_flight = max(0, acc.in_flight - 1)


def _remember(acc: UserAccount, event: Message, *, accepted: bool) -> None:
    if event.causation_id is None:
        return
    acc.handled.pop(event.causation_id, None)
    acc.handled[event.causation_id] = accepted
    while len(acc.handled) > HANDLED_KEPT:
        del acc.handled[next(iter(acc.handled))]


def _close(acc: UserAccount, execution_id: str) -> None:
    acc.closed.pop(execution_id, None)
    acc.closed[execution_id] = None
    while len(acc.closed) > CLOSED_KEPT:
        oldest = next(iter(acc.closed))
        del acc.closed[oldest]
        acc.reservations.pop(oldest, None)
