"""Which offset of each partition may be committed while tasks finish out of order.

An agent runs many tasks of one partition at once, so they finish in any order. Kafka
keeps one committed offset per partition, meaning "everything below is done"; committing
the offset of a finished task while an earlier one still runs would lose the earlier one
on a crash. :class:`OffsetTracker` remembers the offsets handed out per partition and
answers the highest offset below which every one of them is done.

Offsets need not be dense: transaction markers, aborted and compacted records take
offsets too and are never delivered. ``advance(partition, position)`` tells the tracker
that everything below the consumer's position was either delivered (and is tracked) or
is such a gap, so an idle partition commits past trailing markers and its lag is 0.

Pure and synchronous: no Kafka here, so it is tested exhaustively on its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass
class _Partition:
    pending: deque[int] = field(default_factory=deque)  # delivered offsets, ascending
    done: set[int] = field(default_factory=set)  # finished offsets still in ``pending``
    high: int | None = None  # everything below was delivered or is a gap
    committed: int | None = None

    def settle(self) -> None:
        while self.pending and self.pending[0] in self.done:
            self.done.discard(self.pending.popleft())


class OffsetTracker(Generic[P]):
    """Contiguous-commit bookkeeping for any hashable partition key."""

    def __init__(self) -> None:
        self._parts: dict[P, _Partition] = {}

    def start(self, partition: P, offset: int) -> None:
        """Record a delivered offset; offsets of one partition arrive in ascending order."""
        part = self._parts.setdefault(partition, _Partition())
        last = part.pending[-1] if part.pending else None
        if (last is not None and offset <= last) or (part.high is not None and offset < part.high):
            raise ValueError(f"offset {offset} of {partition!r} is not after the ones delivered")
        part.pending.append(offset)
        part.high = offset + 1

    def done(self, partition: P, offset: int) -> bool:
        """Mark a delivered offset finished; False if the partition or offset is unknown
        (it was revoked and forgotten while the task ran)."""
        part = self._parts.get(partition)
        if part is None or offset in part.done or offset not in part.pending:
            return False
        part.done.add(offset)
        part.settle()
        return True

    def advance(self, partition: P, position: int) -> None:
        """Everything below ``position`` was delivered (tracked) or is a gap."""
        part = self._parts.setdefault(partition, _Partition())
        if part.high is None or position > part.high:
            part.high = position

    def committable(self, partition: P) -> int | None:
        """The offset to commit: the first unfinished one, or past everything seen."""
        part = self._parts.get(partition)
        if part is None:
            return None
        if part.pending:
            return part.pending[0]
        return part.high

    def pending(self, partition: P) -> int:
        """How many delivered offsets of ``partition`` are not yet committable."""
        part = self._parts.get(partition)
        return len(part.pending) if part is not None else 0

    def idle(self, partition: P) -> bool:
        return self.pending(partition) == 0

    def to_commit(self) -> dict[P, int]:
        """Partitions whose committable offset moved past the last committed one."""
        out: dict[P, int] = {}
        for partition, part in self._parts.items():
            offset = self.committable(partition)
            if offset is not None and (part.committed is None or offset > part.committed):
                out[partition] = offset
        return out

    def committed(self, offsets: dict[P, int]) -> None:
        """Record offsets the broker accepted."""
        for partition, offset in offsets.items():
            part = self._parts.get(partition)
            if part is not None and (part.committed is None or offset > part.committed):
                part.committed = offset

    def last_committed(self, partition: P) -> int | None:
        part = self._parts.get(partition)
        return part.committed if part is not None else None

    def forget(self, partition: P) -> None:
        """Drop a partition (revoked or reassigned): its tasks' completions are ignored."""
        self._parts.pop(partition, None)

    @property
    def partitions(self) -> tuple[P, ...]:
        return tuple(self._parts)
