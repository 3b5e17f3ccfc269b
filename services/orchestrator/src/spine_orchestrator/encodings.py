"""One batch's encodings: every message the orchestrator publishes is encoded once, to be
measured against the message limit (:mod:`.limits`), and those bytes are what is sent.

Memos are by object identity and hold the object, so an id is never reused within a batch;
an ``Encodings`` lives for one ``handle`` call.
"""

from __future__ import annotations

from collections.abc import Sequence

from spine_contracts import ExecutionSnapshot, Message, to_bytes
from spine_servicekit.kafka import Outgoing

from .domain import AnyState
from .limits import MessageLimit


def snapshot_of(state: AnyState) -> ExecutionSnapshot:
    """The snapshot record of a state (as kept: :func:`.limits.kept`)."""
    return ExecutionSnapshot.build(
        correlation_id=state.correlation_id,
        tenant_id=state.user_id,
        execution_id=state.execution_id,
        seq=state.seq,
        status=state.status,
        state=state.to_dict(),
    )


def within_limit(out: Sequence[Outgoing], max_bytes: int) -> bool:
    """Whether every record's message fits (each encoded once: the send reuses it)."""
    return all(len(item.value) <= max_bytes for item in out)


class Encodings:
    """``checked``: decisions are measured as they are made (:meth:`limit`); otherwise
    there is no limit to give, and the records are measured once decided
    (:func:`within_limit`)."""

    def __init__(self, *, checked: bool) -> None:
        self.checked = checked
        self._values: dict[int, tuple[Message, bytes]] = {}
        self._snapshots: dict[int, tuple[AnyState, ExecutionSnapshot]] = {}

    def limit(self, max_bytes: int) -> MessageLimit | None:
        return MessageLimit(max_bytes, self.size, self.state_size) if self.checked else None

    def value(self, message: Message) -> bytes:
        hit = self._values.get(id(message))
        if hit is None or hit[0] is not message:
            hit = (message, to_bytes(message))
            self._values[id(message)] = hit
        return hit[1]

    def size(self, message: Message) -> int:
        return len(self.value(message))

    def snapshot(self, state: AnyState) -> ExecutionSnapshot:
        hit = self._snapshots.get(id(state))
        if hit is None or hit[0] is not state:
            hit = (state, snapshot_of(state))
            self._snapshots[id(state)] = hit
        return hit[1]

    def state_size(self, state: AnyState) -> int:
        return self.size(self.snapshot(state))

    def attach(self, out: list[Outgoing]) -> list[Outgoing]:
        """``out``, each record given the encoding made for the limit: none is made twice."""
        for item in out:
            hit = self._values.get(id(item.message))
            if hit is not None and hit[0] is item.message:
                item.with_value(hit[1])
        return out
