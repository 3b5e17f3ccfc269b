"""The auth account state machine, without I/O."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import reduce
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spine_auth import domain
from spine_auth.domain import (
    CLOSED_KEPT,
    WITHDRAW_REASON,
    Decision,
    Limits,
    UserAccount,
    decide,
    evolve,
    replay,
)
from spine_auth.errors import ErrorCode, UnsupportedCommand
from spine_contracts import (
    AddCredits,
    AuthCommandRejected,
    CancelExecution,
    CreateUser,
    CreditsAdded,
    CreditsRejected,
    CreditsReserved,
    CreditsSettled,
    FlowDefinition,
    FlowNode,
    KeyRotated,
    Message,
    ReservationWithdrawn,
    ReserveCredits,
    RotateKey,
    SettleCredits,
    StartExecution,
    UserCreated,
    WithdrawReservation,
    parse,
    to_bytes,
)

FLOW = FlowDefinition(flow_id="echo_flow", nodes=(FlowNode(id="echo", agent_id="echo"),), cost=2)
UID = "u1"


def key_hash(tag: str = "a") -> str:
    return (tag * 64)[:64]


def create(
    credits: int = 10, *, hash_: str | None = None, request_id: str | None = "r-c"
) -> CreateUser:
    return CreateUser.build(
        user_id=UID,
        email="ada@example.com",
        name="Ada",
        organization="Analytical",
        credits=credits,
        rate_limit=30,
        key_hash=hash_ or key_hash(),
        request_id=request_id,
    )


def reserve(
    execution_id: str,
    amount: int = 1,
    request_id: str | None = None,
    base_credits: int | None = None,
) -> ReserveCredits:
    return ReserveCredits.build(
        correlation_id=f"corr-{execution_id}",
        trace="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        user_id=UID,
        execution_id=execution_id,
        amount=amount,
        flow=FLOW,
        flow_version=FLOW.content_hash(),
        input_data={"q": 1},
        metadata={"src": "test"},
        request_id=request_id or f"r-{execution_id}",
        base_credits=base_credits,
    )


def settle(
    execution_id: str,
    outcome: str = "completed",
    charge: int = 1,
    tokens: tuple[int, int] = (0, 0),
) -> SettleCredits:
    return SettleCredits.build(
        user_id=UID,
        execution_id=execution_id,
        outcome=outcome,
        charge=charge,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
    )


def withdraw(execution_id: str) -> WithdrawReservation:
    return WithdrawReservation.build(
        user_id=UID, execution_id=execution_id, request_id=f"w-{execution_id}"
    )


def add(credits: int) -> AddCredits:
    return AddCredits.build(user_id=UID, credits=credits, request_id=f"a-{uuid.uuid4()}")


class Ledger:
    """Runs commands through decide, keeping the state and every event (the log)."""

    def __init__(self, *commands: Message, limits: Limits | None = None) -> None:
        self.state: UserAccount | None = None
        self.log: list[Message] = []
        self.limits = limits or Limits()
        for command in commands:
            self(command)

    def __call__(self, command: Message) -> Decision:
        decision = decide(self.state, command, self.limits)
        self.state = decision.state
        self.log.extend(decision.events)
        return decision

    @property
    def account(self) -> UserAccount:
        assert self.state is not None
        return self.state


def types(messages: Sequence[Message]) -> list[type[Message]]:
    return [type(m) for m in messages]


def rebuilt(events: Sequence[Message]) -> UserAccount | None:
    return reduce(evolve, events, None)


# --- users and keys --------------------------------------------------------------------------


def test_create_user_starts_with_its_credits_and_answers_the_gateway() -> None:
    command = create(7)
    d = decide(None, command)
    assert types(d.events) == [UserCreated]
    event = d.events[0]
    assert isinstance(event, UserCreated)
    assert event.data.balance == 7 and event.data.key_hash == key_hash()
    assert event.causation_id == str(command.message_id) and event.tenant_id == UID
    assert d.state is not None and d.state.balance == 7 and d.state.rate_limit == 30
    assert d.reply is not None and d.reply.data.ok and d.reply.data.request_id == "r-c"
    assert d.reply.data.body["balance"] == 7 and d.reply.data.body["user_id"] == UID
    assert d.commands == ()


def test_existing_user_id_is_rejected_with_user_exists() -> None:
    ledger = Ledger(create())
    d = ledger(create(hash_=key_hash("b"), request_id="r-other"))
    assert types(d.events) == [AuthCommandRejected]
    assert d.reply is not None and not d.reply.data.ok
    assert d.reply.data.error_code == ErrorCode.USER_EXISTS
    assert ledger.account.key_hash == key_hash()  # untouched


def test_repeated_create_user_emits_nothing_and_answers_again() -> None:
    first = create()
    ledger = Ledger(first)
    again = ledger(first)  # the same message delivered twice
    retried = ledger(create(request_id="r-c"))  # a new message of the same request (same key)
    for d in (again, retried):
        assert d.events == ()
        assert d.reply is not None and d.reply.data.ok and d.reply.data.body["balance"] == 10
    # a repeat of a refused create is refused again, without another event
    conflicting = create(hash_=key_hash("c"), request_id="r-x")
    ledger(conflicting)
    d = ledger(conflicting)
    assert d.events == ()
    assert d.reply is not None and d.reply.data.error_code == ErrorCode.USER_EXISTS


def test_rotate_key_names_the_previous_hash_and_is_idempotent() -> None:
    ledger = Ledger(create())
    rotate = RotateKey.build(user_id=UID, key_hash=key_hash("b"), request_id="r-k")
    d = ledger(rotate)
    assert types(d.events) == [KeyRotated]
    event = d.events[0]
    assert isinstance(event, KeyRotated)
    assert event.data.previous_key_hash == key_hash() and event.data.key_hash == key_hash("b")
    assert d.reply is not None and d.reply.data.ok
    assert ledger(rotate).events == ()
    assert ledger(RotateKey.build(user_id=UID, key_hash=key_hash("b"))).events == ()
    assert ledger.account.key_hash == key_hash("b")
    # the creating request repeated after a rotation is still recognised
    assert ledger(create()).events == ()


@pytest.mark.parametrize(
    "command",
    [
        RotateKey.build(user_id=UID, key_hash=key_hash(), request_id="r"),
        AddCredits.build(user_id=UID, credits=1, request_id="r"),
        reserve("e1"),
        withdraw("e1"),
    ],
    ids=lambda c: c.type,
)
def test_unknown_user_is_rejected_with_user_not_found(command: Message) -> None:
    d = decide(None, command)
    assert types(d.events) == [AuthCommandRejected]
    rejected = d.events[0]
    assert isinstance(rejected, AuthCommandRejected)
    assert rejected.data.command_type == command.type and rejected.data.request_id is not None
    assert d.state is None and d.commands == ()
    assert d.reply is not None and d.reply.data.error_code == ErrorCode.USER_NOT_FOUND


def test_settle_for_an_unknown_user_is_recorded_without_a_reply() -> None:
    d = decide(None, settle("e1"))
    assert types(d.events) == [AuthCommandRejected] and d.reply is None


def test_add_credits_reports_the_new_balance_once_per_message() -> None:
    ledger = Ledger(create(3))
    command = add(4)
    d = ledger(command)
    assert types(d.events) == [CreditsAdded]
    assert isinstance(d.events[0], CreditsAdded) and d.events[0].data.balance == 7
    assert d.reply is not None and d.reply.data.body["balance"] == 7
    again = ledger(command)
    assert again.events == () and again.reply is not None and again.reply.data.ok
    assert ledger.account.balance == 7


# --- reservations ----------------------------------------------------------------------------


def test_reserve_holds_the_cost_and_starts_the_execution_in_the_same_decision() -> None:
    ledger = Ledger(create(5))
    command = reserve("e1", amount=2)
    d = ledger(command)
    assert types(d.events) == [CreditsReserved]
    assert isinstance(d.events[0], CreditsReserved) and d.events[0].data.balance == 3
    (start,) = d.commands
    assert isinstance(start, StartExecution)
    assert start.data.execution_id == "e1" and start.data.user_id == UID
    assert start.data.flow == FLOW and start.data.flow_version == FLOW.content_hash()
    assert start.data.input_data == {"q": 1} and start.data.metadata == {"src": "test"}
    assert start.data.credits_reserved == 2
    assert start.correlation_id == "corr-e1" and start.trace == command.trace
    assert start.causation_id == str(command.message_id) and start.tenant_id == UID
    assert d.reply is not None and d.reply.data.ok
    assert d.reply.data.body == {
        "user_id": UID,
        "execution_id": "e1",
        "status": "reserved",
        "amount": 2,
        "charged": 0,
        "refunded": 0,
        "balance": 3,
        "queued": False,
    }


def test_reserve_carries_a_priced_flows_base_price_to_its_start() -> None:
    # a priced flow reserves max_credits; the orchestrator charges base price + tokens
    plain = Ledger(create(50))(reserve("e1", amount=2)).commands[0]
    assert isinstance(plain, StartExecution) and plain.data.base_credits is None
    (start,) = Ledger(create(50))(reserve("e2", amount=20, base_credits=2)).commands
    assert isinstance(start, StartExecution)
    assert (start.data.credits_reserved, start.data.base_credits) == (20, 2)


def test_reserve_beyond_the_balance_is_rejected_with_the_numbers() -> None:
    ledger = Ledger(create(1))
    d = ledger(reserve("e1", amount=2))
    assert types(d.events) == [CreditsRejected] and d.commands == ()
    rejected = d.events[0]
    assert isinstance(rejected, CreditsRejected)
    assert rejected.data.reason == "insufficient credits: balance 1, cost 2"
    assert d.reply is not None and d.reply.data.error_code == ErrorCode.INSUFFICIENT_CREDITS
    assert d.reply.data.message == "insufficient credits: balance 1, cost 2"
    assert ledger.account.balance == 1


def test_a_repeated_reserve_emits_nothing_and_answers_the_first_outcome() -> None:
    ledger = Ledger(create(1))
    granted = ledger(reserve("e1"))
    refused = ledger(reserve("e2"))
    ledger(add(5))  # credits arriving later do not turn a refusal into a grant
    for first, execution_id in ((granted, "e1"), (refused, "e2")):
        again = ledger(reserve(execution_id))
        assert again.events == () and again.commands == ()
        assert again.reply is not None and first.reply is not None
        assert again.reply.data.ok == first.reply.data.ok
        assert again.reply.data.error_code == first.reply.data.error_code
        assert again.reply.data.body["status"] == first.reply.data.body["status"]
    assert ledger.account.balance == 5


def test_withdraw_refunds_a_held_reservation_and_cancels_its_execution() -> None:
    ledger = Ledger(create(3), reserve("e1", amount=2))
    d = ledger(withdraw("e1"))
    assert types(d.events) == [ReservationWithdrawn]
    assert isinstance(d.events[0], ReservationWithdrawn)
    assert d.events[0].data.refunded == 2 and d.events[0].data.balance == 3
    (cancel,) = d.commands
    assert isinstance(cancel, CancelExecution)
    assert cancel.data.execution_id == "e1" and cancel.data.reason == WITHDRAW_REASON
    assert d.reply is not None and d.reply.data.ok and d.reply.data.body["status"] == "withdrawn"
    # a repeat, and a late settle, change nothing; the repeated reserve is refused
    assert ledger(withdraw("e1")).events == ()
    assert ledger(settle("e1", charge=2)).events == ()
    again = ledger(reserve("e1", amount=2))
    assert again.events == () and again.commands == ()
    assert (
        again.reply is not None and again.reply.data.error_code == ErrorCode.RESERVATION_WITHDRAWN
    )
    assert ledger.account.balance == 3


def test_withdraw_of_a_rejected_unknown_or_settled_reservation_only_answers() -> None:
    ledger = Ledger(create(1), reserve("e1"), reserve("e2"), settle("e1"))
    for execution_id, ok, status in (("e1", True, "settled"), ("e2", True, "rejected")):
        d = ledger(withdraw(execution_id))
        assert d.events == () and d.commands == ()
        assert d.reply is not None and d.reply.data.ok is ok
        assert d.reply.data.body["status"] == status
    d = ledger(withdraw("nope"))
    assert d.events == () and d.reply is not None
    assert d.reply.data.error_code == ErrorCode.RESERVATION_NOT_FOUND
    assert ledger.account.balance == 0


@pytest.mark.parametrize(
    ("outcome", "charge", "charged", "refunded", "overshoot"),
    [
        ("completed", 3, 3, 0, 0),
        ("completed", 2, 2, 1, 0),
        ("failed", 0, 0, 3, 0),
        ("failed", 5, 3, 0, 2),  # the tokens of a failed run cost more than was reserved
        ("cancelled", 0, 0, 3, 0),
        ("cancelled", 3, 3, 0, 0),
        ("completed", 99, 3, 0, 96),
    ],
)
def test_settle_charges_at_most_the_reservation_and_records_the_overshoot(
    outcome: str, charge: int, charged: int, refunded: int, overshoot: int
) -> None:
    ledger = Ledger(create(5), reserve("e1", amount=3))
    d = ledger(settle("e1", outcome, charge, tokens=(1200, 300)))
    assert types(d.events) == [CreditsSettled] and d.reply is None and d.commands == ()
    event = d.events[0]
    assert isinstance(event, CreditsSettled)
    data = event.data
    assert (data.outcome, data.charged, data.refunded, data.overshoot) == (
        outcome,
        charged,
        refunded,
        overshoot,
    )
    assert (data.input_tokens, data.output_tokens) == (1200, 300)
    assert ledger.account.balance == 2 + refunded
    assert (ledger.account.input_tokens, ledger.account.output_tokens) == (1200, 300)
    assert ledger(settle("e1", outcome, charge, tokens=(1200, 300))).events == ()  # never twice
    assert ledger.account.balance == 2 + refunded
    assert (ledger.account.input_tokens, ledger.account.output_tokens) == (1200, 300)


def test_token_totals_add_up_over_settles_and_survive_a_rebuild() -> None:
    ledger = Ledger(create(10), reserve("e1", 2), reserve("e2", 2), reserve("e3", 2))
    ledger(settle("e1", "completed", 2, tokens=(100, 40)))
    ledger(settle("e2", "failed", 1, tokens=(7, 0)))
    ledger(withdraw("e3"))  # a withdrawn execution used no model
    ledger(settle("e3", "cancelled", 0, tokens=(50, 50)))  # too late: nothing counts
    assert (ledger.account.input_tokens, ledger.account.output_tokens) == (107, 40)
    decoded = [parse(to_bytes(e)) for e in ledger.log]
    assert rebuilt(decoded) == ledger.account
    # a settle event met twice in a fold (a log copied by hand) counts its tokens once
    settled = [e for e in decoded if isinstance(e, CreditsSettled)]
    again = rebuilt([*decoded, *settled])
    assert again is not None
    assert (again.input_tokens, again.output_tokens) == (107, 40)


def test_settle_of_an_unknown_or_rejected_reservation_is_recorded() -> None:
    ledger = Ledger(create(0), reserve("e1"))
    for execution_id in ("e1", "nope"):
        d = ledger(settle(execution_id))
        assert types(d.events) == [AuthCommandRejected] and d.reply is None
    assert ledger.account.balance == 0


def test_a_reply_needs_a_request_id() -> None:
    command = AddCredits.build(user_id=UID, credits=1)
    assert decide(Ledger(create()).account, command).reply is None


def test_decide_does_not_mutate_the_state_it_is_given() -> None:
    ledger = Ledger(create(5), reserve("e1", 2))
    before = ledger.account.copy()
    for command in (reserve("e2"), settle("e1"), withdraw("e1"), add(1), create()):
        decide(ledger.account, command)
    assert ledger.account == before


def test_other_messages_are_refused() -> None:
    with pytest.raises(UnsupportedCommand):
        decide(
            None,
            UserCreated.build(user_id=UID, email="x", rate_limit=1, key_hash=key_hash(), balance=0),
        )


def test_closed_reservations_are_forgotten_oldest_first_open_ones_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(domain, "CLOSED_KEPT", 3)
    ledger = Ledger(create(100), reserve("open"))
    for i in range(6):
        ledger(reserve(f"e{i}"))
        ledger(settle(f"e{i}"))
    assert list(ledger.account.closed) == ["e3", "e4", "e5"]
    assert set(ledger.account.reservations) == {"open", "e3", "e4", "e5"}
    assert rebuilt(ledger.log) == ledger.account
    assert CLOSED_KEPT == 10_000


# --- the fold ----------------------------------------------------------------------------------


def test_state_is_the_fold_of_the_events_also_after_a_round_trip() -> None:
    ledger = Ledger(
        create(4),
        reserve("e1"),
        reserve("e2", 2),
        add(3),
        withdraw("e2"),
        settle("e1", charge=1),
        reserve("e3", 9),
        RotateKey.build(user_id=UID, key_hash=key_hash("z")),
    )
    decoded = [parse(to_bytes(e)) for e in ledger.log]
    assert rebuilt(decoded) == ledger.account
    accounts: dict[str, UserAccount] = {}
    replay(accounts, decoded)
    assert accounts == {UID: ledger.account}


# --- properties --------------------------------------------------------------------------------

EXECUTIONS = [f"e{i}" for i in range(6)]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 5)),
        st.tuples(st.just("reserve"), st.sampled_from(EXECUTIONS), st.integers(0, 4)),
        st.tuples(
            st.just("settle"),
            st.sampled_from(EXECUTIONS),
            st.sampled_from(["completed", "failed", "cancelled"]),
            st.integers(0, 12),  # reservations are 0-4: often above, as a priced flow asks
            st.tuples(st.integers(0, 5_000), st.integers(0, 5_000)),
        ),
        st.tuples(st.just("withdraw"), st.sampled_from(EXECUTIONS)),
    ),
    max_size=60,
)


def command_for(op: tuple[Any, ...]) -> Message:
    if op[0] == "add":
        return add(op[1])
    if op[0] == "reserve":
        return reserve(op[1], op[2])
    if op[0] == "settle":
        return settle(op[1], op[2], op[3], op[4])
    return withdraw(op[1])


@settings(max_examples=300, deadline=None)
@given(initial=st.integers(0, 8), ops=operations)
def test_any_interleaving_keeps_the_books_balanced(
    initial: int, ops: list[tuple[Any, ...]]
) -> None:
    ledger = Ledger(create(initial))
    credited = initial
    charged = 0
    tokens = [0, 0]
    held: dict[str, int] = {}
    closings: dict[str, int] = {}
    started: list[str] = []
    for op in ops:
        command = command_for(op)
        d = ledger(command)
        for e in d.events:
            if isinstance(e, CreditsAdded):
                credited += e.data.amount
            elif isinstance(e, CreditsReserved):
                assert e.data.execution_id not in held and e.data.execution_id not in closings
                held[e.data.execution_id] = e.data.amount
            elif isinstance(e, ReservationWithdrawn | CreditsSettled):
                amount = held.pop(e.data.execution_id)  # only a held reservation closes
                closings[e.data.execution_id] = closings.get(e.data.execution_id, 0) + 1
                if isinstance(e, CreditsSettled):
                    assert isinstance(command, SettleCredits)
                    asked = command.data
                    assert e.data.charged + e.data.refunded == amount
                    assert e.data.charged == min(asked.charge, amount)  # never past the hold
                    assert e.data.overshoot == asked.charge - e.data.charged >= 0
                    assert (e.data.input_tokens, e.data.output_tokens) == (
                        asked.input_tokens,
                        asked.output_tokens,
                    )
                    charged += e.data.charged
                    tokens[0] += e.data.input_tokens
                    tokens[1] += e.data.output_tokens
                else:
                    assert e.data.refunded == amount
        started += [c.data.execution_id for c in d.commands if isinstance(c, StartExecution)]
        assert [c.data.execution_id for c in d.commands if isinstance(c, CancelExecution)] == [
            e.data.execution_id for e in d.events if isinstance(e, ReservationWithdrawn)
        ]
        balance = ledger.account.balance
        assert balance >= 0
        assert balance == credited - charged - sum(held.values())
        assert ledger.account.held == sum(held.values())
        assert [ledger.account.input_tokens, ledger.account.output_tokens] == tokens
    assert all(n == 1 for n in closings.values())  # refunded or charged at most once
    assert len(started) == len(set(started))  # an execution is started at most once
    # closing whatever is still held squares the books: balance = credits in - charged
    for execution_id in list(held):
        ledger(withdraw(execution_id) if int(execution_id[1:]) % 2 else settle(execution_id))
    settled = sum(e.data.charged for e in ledger.log if isinstance(e, CreditsSettled))
    assert ledger.account.held == 0
    assert ledger.account.balance == credited - settled
    assert rebuilt(ledger.log) == ledger.account


@settings(max_examples=100, deadline=None)
@given(ops=operations, initial=st.integers(0, 8))
def test_repeating_every_command_changes_nothing(initial: int, ops: list[tuple[Any, ...]]) -> None:
    once = Ledger(create(initial))
    twice = Ledger(create(initial))
    for op in ops:
        command = command_for(op)
        once(command)
        twice(command)
        assert twice(command).events == ()  # the same message again is a no-op
    assert once.account.balance == twice.account.balance
    assert [(type(e), e.data) for e in once.log] == [(type(e), e.data) for e in twice.log]
