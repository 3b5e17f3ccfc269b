"""Per-user max_in_flight, the queue behind it and the caps (DESIGN §16): pure, no I/O."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from spine_auth.domain import Decision, Limits, decide
from spine_auth.errors import ErrorCode
from spine_contracts import (
    CancelExecution,
    CreditsReserved,
    ExecutionReleased,
    LimitsSet,
    ReleaseExecution,
    SetLimits,
    StartExecution,
)

from .test_domain import UID, Ledger, create, rebuilt, reserve, settle, withdraw


def Account(limits: Limits, credits: int = 1000) -> Ledger:  # noqa: N802
    """A user created with ``credits``, its commands decided against ``limits``."""
    return Ledger(create(credits), limits=limits)


def started(d: Decision) -> list[StartExecution]:
    return [c for c in d.commands if isinstance(c, StartExecution)]


def released(d: Decision) -> list[str]:
    return [c.data.execution_id for c in d.commands if isinstance(c, ReleaseExecution)]


def test_beyond_max_in_flight_the_execution_is_queued_with_its_credits_held() -> None:
    a = Account(Limits(max_in_flight=2))
    for eid in ("e1", "e2"):
        assert not started(a(reserve(eid)))[0].data.queued
    d = a(reserve("e3", amount=5))
    (start,) = started(d)
    assert start.data.queued
    (reserved,) = [e for e in d.events if isinstance(e, CreditsReserved)]
    assert reserved.data.queued and reserved.data.balance == 1000 - 1 - 1 - 5
    assert d.reply is not None and d.reply.data.ok and d.reply.data.body["queued"] is True
    assert a.account.in_flight == 2 and list(a.account.queue) == ["e3"]


def test_a_settle_releases_the_oldest_queued_and_a_queued_cancel_only_leaves() -> None:
    a = Account(Limits(max_in_flight=1))
    a(reserve("e1"))
    a(reserve("e2"))
    a(reserve("e3"))
    assert list(a.account.queue) == ["e2", "e3"]
    # e3 is cancelled while queued: the orchestrator settles it with nothing charged
    d = a(settle("e3", "cancelled", charge=0))
    assert released(d) == [] and list(a.account.queue) == ["e2"]
    assert a.account.in_flight == 1
    d = a(settle("e1"))
    assert released(d) == ["e2"]
    assert [type(e) for e in d.events][-1] is ExecutionReleased
    assert a.account.in_flight == 1 and a.account.queue == {}
    # a newcomer queues behind nobody now, but the slot is taken
    assert started(a(reserve("e4")))[0].data.queued


def test_a_newcomer_queues_behind_the_queue_even_with_a_free_slot() -> None:
    a = Account(Limits(max_in_flight=1))
    a(reserve("e1"))
    a(reserve("e2"))  # queued
    a(SetLimits.build(user_id=UID, max_in_flight=1))  # no change: nothing emitted
    # a withdrawal of the running one frees its slot; e2 goes first, then e3 queues
    d = a(withdraw("e1"))
    assert released(d) == ["e2"]
    assert [type(c) for c in d.commands] == [CancelExecution, ReleaseExecution]
    assert started(a(reserve("e3")))[0].data.queued


def test_the_queue_caps_refuse_with_queue_full_and_record_nothing() -> None:
    a = Account(Limits(max_in_flight=1, max_queued=2))
    for eid in ("e1", "e2", "e3"):
        a(reserve(eid))
    before = a.account
    d = a(reserve("e4"))
    assert d.events == () and d.commands == ()
    assert d.reply is not None and not d.reply.data.ok
    assert d.reply.data.error_code == ErrorCode.QUEUE_FULL
    assert d.reply.data.body["retry_after"] > 0
    assert "max_queued 2" in (d.reply.data.message or "")
    assert a.account is before  # nothing recorded: a retry is decided afresh
    # the partition's cap, with room in the user's own queue
    full = Account(Limits(max_in_flight=1, partition_queue_cap=5, partition_queued=5))
    full(reserve("p1"))  # runs: not queued, so the partition's cap does not apply
    d = full(reserve("p2"))
    assert d.reply is not None and d.reply.data.error_code == ErrorCode.QUEUE_FULL
    assert "cap 5" in (d.reply.data.message or "")


def test_raising_the_limit_releases_what_it_allows_and_the_users_limits_win() -> None:
    a = Account(Limits(max_in_flight=1))
    for eid in ("e1", "e2", "e3", "e4"):
        a(reserve(eid))
    d = a(SetLimits.build(user_id=UID, max_in_flight=3, request_id="r-l"))
    assert released(d) == ["e2", "e3"]
    assert isinstance(d.events[0], LimitsSet)
    assert d.reply is not None and d.reply.data.body["max_in_flight"] == 3
    assert a.account.in_flight == 3 and list(a.account.queue) == ["e4"]
    assert rebuilt(a.log) == a.account  # the fold of the events says the same


def test_created_with_its_own_limits() -> None:
    cmd = create(10)
    custom = cmd.model_copy(
        update={"data": cmd.data.model_copy(update={"max_in_flight": 2000, "max_queued": 0})}
    )
    d = decide(None, custom, Limits())
    assert d.state is not None and d.state.max_in_flight == 2000
    assert d.reply is not None and d.reply.data.body["max_in_flight"] == 2000
    d2 = decide(d.state, reserve("e1"), Limits())
    assert not started(d2)[0].data.queued


ops = st.lists(
    st.tuples(st.sampled_from(["reserve", "settle", "withdraw", "limit"]), st.integers(0, 7)),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(limit=st.integers(1, 3), steps=ops)
def test_running_never_exceeds_the_limit_and_the_fold_agrees(
    limit: int, steps: list[tuple[str, int]]
) -> None:
    a = Account(Limits(max_in_flight=limit, max_queued=4))
    limit_now = limit
    for op, n in steps:
        eid = f"e{n}"
        command: Any
        if op == "reserve":
            command = reserve(eid)
        elif op == "settle":
            command = settle(eid)
        elif op == "withdraw":
            command = withdraw(eid)
        else:
            limit_now = 1 + n % 3
            command = SetLimits.build(user_id=UID, max_in_flight=limit_now)
        a(command)
        acc = a.account
        held = {e for e, r in acc.reservations.items() if r.held}
        assert set(acc.queue) <= held
        assert acc.in_flight == len(held) - len(acc.queue)
        # a slot frees the queue at once: never a free slot with someone waiting
        assert not acc.queue or acc.in_flight >= limit_now
        assert len(acc.queue) <= 4
        assert rebuilt(a.log) == acc
