"""The contiguous-offset tracker: whatever the completion order, the committable offset is
the first unfinished one (or past everything delivered), and it never moves back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from spine_agent import OffsetTracker

P = "tasks-0"


@st.composite
def sparse_offsets(draw: st.DrawFn) -> list[int]:
    """Ascending offsets with gaps, as transaction markers and aborted records leave them."""
    start = draw(st.integers(0, 1_000))
    steps = draw(st.lists(st.integers(1, 3), min_size=1, max_size=60))
    offsets, current = [], start
    for step in steps:
        offsets.append(current)
        current += step
    return offsets


@given(data=st.data(), offsets=sparse_offsets(), trailing=st.integers(0, 3))
def test_any_completion_order_commits_the_highest_contiguous_offset(
    data: st.DataObject, offsets: list[int], trailing: int
) -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in offsets:
        tracker.start(P, offset)
    position = offsets[-1] + 1 + trailing  # e.g. a commit marker after the last task
    tracker.advance(P, position)
    assert tracker.committable(P) == offsets[0]

    finished: set[int] = set()
    previous = offsets[0]
    for offset in data.draw(st.permutations(offsets)):
        assert tracker.done(P, offset)
        finished.add(offset)
        expected = min((o for o in offsets if o not in finished), default=position)
        committable = tracker.committable(P)
        assert committable == expected
        assert committable is not None and committable >= previous
        previous = committable
    assert tracker.idle(P)
    assert tracker.committable(P) == position


class TrackerMachine(RuleBasedStateMachine):
    """Deliveries, completions, commits and position updates interleaved at random."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker: OffsetTracker[int] = OffsetTracker()
        self.delivered: dict[int, list[int]] = {0: [], 1: []}
        self.finished: dict[int, set[int]] = {0: set(), 1: set()}
        self.next: dict[int, int] = {0: 0, 1: 0}
        self.committed: dict[int, int] = {}

    @rule(partition=st.sampled_from([0, 1]), gap=st.integers(0, 2))
    def deliver(self, partition: int, gap: int) -> None:
        offset = self.next[partition] + gap
        self.tracker.start(partition, offset)
        self.delivered[partition].append(offset)
        self.next[partition] = offset + 1

    @precondition(lambda self: any(set(d) - self.finished[p] for p, d in self.delivered.items()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        choices = sorted(
            (p, o) for p, d in self.delivered.items() for o in d if o not in self.finished[p]
        )
        partition, offset = data.draw(st.sampled_from(choices))
        assert self.tracker.done(partition, offset)
        self.finished[partition].add(offset)

    @rule(partition=st.sampled_from([0, 1]), markers=st.integers(0, 2))
    def skip_markers(self, partition: int, markers: int) -> None:
        # The consumer moved past control records after everything delivered so far.
        self.next[partition] += markers
        self.tracker.advance(partition, self.next[partition])

    @rule()
    def commit(self) -> None:
        offsets = self.tracker.to_commit()
        for partition, offset in offsets.items():
            assert offset > self.committed.get(partition, -1)
        self.tracker.committed(offsets)
        self.committed.update(offsets)

    @invariant()
    def committable_is_first_unfinished(self) -> None:
        for partition, delivered in self.delivered.items():
            if not delivered and partition not in self.tracker.partitions:
                continue
            unfinished = [o for o in delivered if o not in self.finished[partition]]
            expected = min(unfinished) if unfinished else self.next[partition]
            assert self.tracker.committable(partition) == expected
            for offset in delivered:
                if offset < expected:
                    assert offset in self.finished[partition]


TestTrackerMachine = TrackerMachine.TestCase
TestTrackerMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


def test_out_of_order_delivery_is_refused() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.start(P, 5)
    with pytest.raises(ValueError):
        tracker.start(P, 5)
    with pytest.raises(ValueError):
        tracker.start(P, 3)
    tracker.advance(P, 10)
    with pytest.raises(ValueError):
        tracker.start(P, 8)


def test_forgotten_partition_ignores_late_completions() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.start(P, 0)
    tracker.start(P, 1)
    tracker.forget(P)
    assert tracker.done(P, 0) is False
    assert tracker.committable(P) is None
    assert tracker.to_commit() == {}


def test_unknown_or_repeated_completion_changes_nothing() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.start(P, 0)
    tracker.start(P, 1)
    assert tracker.done(P, 7) is False
    assert tracker.done(P, 1) is True
    assert tracker.done(P, 1) is False
    assert tracker.committable(P) == 0
    assert tracker.pending(P) == 2


def test_to_commit_reports_only_progress() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.start(P, 0)
    tracker.start(P, 1)
    tracker.done(P, 0)
    assert tracker.to_commit() == {P: 1}
    tracker.committed({P: 1})
    assert tracker.to_commit() == {}
    tracker.done(P, 1)
    assert tracker.to_commit() == {P: 2}
    assert tracker.last_committed(P) == 1
