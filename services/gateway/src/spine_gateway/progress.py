"""Agents' live progress (``agent.progress``), relayed to the open streams of its execution.

Every agent may write the progress topic, so nothing in a progress message is believed
until the gateway checks it (DESIGN §12, §14). Each replica follows the topic from its end
(live only: nothing is replayed, nothing stored) and, for an execution someone is watching
on this replica, :func:`judge` decides:

1. the node was dispatched to the agent the message names, at that attempt, and has not
   finished — from :class:`DispatchBook`, folded from the execution events this replica
   decodes (the live trail's batches; a node dispatched before this replica started is
   looked up once in the read model). Progress for a dispatch not decoded yet is dropped;
2. the record verifies against the key of the agent the node was dispatched to (as
   heartbeats are verified), so agent B cannot speak for agent A's node;
3. at most :data:`RATE_PER_S` messages a second per node (a token bucket; the SDK already
   coalesces to that), so a misbehaving agent cannot flood the streams.

Each refusal is counted by reason. What passes goes to each subscriber's bounded queue
(a client too slow to take it loses progress, never trail events) as a view
``{"type": "execution.node_progress", "data": {...}}`` without ``seq``: the trail's
sequence numbers, ``Last-Event-ID`` and ``/events`` never see it.

Pure apart from ``asyncio`` queues: the Kafka follower is in ``adapters.kafka``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from spine_contracts import (
    AgentProgress,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    Message,
    NodeCompleted,
    NodeDispatched,
    NodeFailed,
    NodeSkipped,
    NodeWaitingInput,
)
from spine_contracts.messages.agents import AgentProgressData
from spine_servicekit.projector import Incoming

from .subscribers import Subscribers

PROGRESS_EVENT_TYPE = "execution.node_progress"
#: progress messages a second per node the gateway relays (the SDK sends about as many)
RATE_PER_S = 10.0
#: what a stream's queue holds before its progress is dropped (the client is not reading)
QUEUE_LIMIT = 256

#: Why a progress message was not relayed (``spine_gateway_progress_dropped_total{reason}``):
#: ``not_dispatched`` no dispatch of the node is known here (or not decoded yet);
#: ``other_agent`` the node was dispatched to another agent; ``other_attempt`` to another
#: attempt; ``finished`` the node (or its execution) has finished; ``unverified`` the
#: signature does not verify with the dispatched agent's key; ``rate`` over
#: :data:`RATE_PER_S`; ``slow_client`` a subscriber's queue was full.
Refusal = Literal[
    "not_dispatched",
    "other_agent",
    "other_attempt",
    "finished",
    "unverified",
    "rate",
    "slow_client",
]


@dataclass(frozen=True)
class NodeState:
    """The node's latest dispatch as decoded: to whom, which attempt, and whether it ended."""

    agent_id: str
    attempt: int
    finished: bool = False


def judge(
    state: NodeState | None,
    data: AgentProgressData,
    verified: Callable[[str], bool],
    within_rate: Callable[[], bool],
) -> Refusal | None:
    """Why ``data`` is not relayed, or ``None``. ``verified(agent_id)`` checks the record's
    signature against that agent's key and ``within_rate()`` takes a token; both are called
    only once the cheaper checks passed, so a forged message never uses up the node's rate."""
    if state is None:
        return "not_dispatched"
    if state.agent_id != data.agent_id:
        return "other_agent"
    if state.attempt != data.attempt:
        return "other_attempt"
    if state.finished:
        return "finished"
    if not verified(state.agent_id):
        return "unverified"
    if not within_rate():
        return "rate"
    return None


def progress_view(data: AgentProgressData) -> dict[str, Any]:
    """What a stream shows of one message (SSE ``data``; the WebSocket frame's ``data``)."""
    return {
        "node_id": data.node_id,
        "agent_id": data.agent_id,
        "attempt": data.attempt,
        "seq": data.seq,
        "text": data.text,
        "tokens": data.tokens,
        "status": data.status,
    }


def is_progress(view: dict[str, Any]) -> bool:
    return view.get("type") == PROGRESS_EVENT_TYPE


class DispatchBook:
    """Each execution's nodes as their dispatch and end events say, bounded (the least
    recently touched executions are forgotten first; their progress is then looked up in
    the read model again, or dropped)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._nodes: dict[str, dict[str, NodeState]] = {}
        self._limit = limit

    def tap(self, batch: Sequence[Incoming]) -> None:
        """Called with every decoded batch of execution events (beside the live trail's)."""
        for item in batch:
            self.observe(item.message)

    def observe(self, message: Message) -> None:
        d: Any = message.data
        eid: str | None = getattr(d, "execution_id", None)
        if eid is None:
            return
        if isinstance(message, NodeDispatched):
            self._touch(eid)[d.node_id] = NodeState(d.agent_id, d.attempt)
        elif isinstance(message, NodeCompleted | NodeFailed | NodeWaitingInput):
            nodes = self._touch(eid)
            now = nodes.get(d.node_id)
            if now is not None and now.attempt == d.attempt:
                nodes[d.node_id] = NodeState(now.agent_id, now.attempt, True)
        elif isinstance(message, NodeSkipped):
            nodes = self._touch(eid)
            now = nodes.get(d.node_id)
            if now is not None:
                nodes[d.node_id] = NodeState(now.agent_id, now.attempt, True)
        elif isinstance(message, ExecutionCompleted | ExecutionFailed | ExecutionCancelled):
            nodes = self._touch(eid)
            for node_id, now in list(nodes.items()):
                nodes[node_id] = NodeState(now.agent_id, now.attempt, True)

    def known(self, execution_id: str) -> bool:
        return execution_id in self._nodes

    def seed(self, execution_id: str, running: dict[str, NodeState]) -> None:
        """What the read model says of an execution this replica has decoded nothing of;
        never overrides what was decoded meanwhile (that is newer)."""
        nodes = self._touch(execution_id)
        for node_id, state in running.items():
            nodes.setdefault(node_id, state)

    def state(self, execution_id: str, node_id: str) -> NodeState | None:
        nodes = self._nodes.get(execution_id)
        return None if nodes is None else nodes.get(node_id)

    def _touch(self, execution_id: str) -> dict[str, NodeState]:
        nodes = self._nodes.pop(execution_id, None)
        if nodes is None:
            nodes = {}
            if len(self._nodes) >= self._limit:  # bounded: the least recent half goes
                for old in list(self._nodes)[: self._limit // 2]:
                    del self._nodes[old]
        self._nodes[execution_id] = nodes  # re-inserted: the dict stays in order of recency
        return nodes


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimit:
    """A token bucket per node and attempt: ``rate`` a second, bursts up to ``rate``."""

    rate: float = RATE_PER_S
    limit: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[tuple[str, str, int], _Bucket] = field(default_factory=dict)

    def take(self, execution_id: str, node_id: str, attempt: int) -> bool:
        key = (execution_id, node_id, attempt)
        now = self.clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            if len(self._buckets) >= self.limit:
                for old in list(self._buckets)[: self.limit // 2]:
                    del self._buckets[old]
            bucket = _Bucket(self.rate, now)
        bucket.tokens = min(self.rate, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        self._buckets[key] = bucket
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True


class ProgressHub:
    """The streams of each execution open on this replica, and what goes to them."""

    def __init__(
        self,
        book: DispatchBook,
        count_drop: Callable[[Refusal], None] = lambda _r: None,
        count_relayed: Callable[[], None] = lambda: None,
    ) -> None:
        self.book = book
        self.rate = RateLimit()
        self._count_drop = count_drop
        self._count_relayed = count_relayed
        self._subscribers: Subscribers[dict[str, Any]] = Subscribers()
        self.relayed = 0

    def watched(self, execution_id: str) -> bool:
        return execution_id in self._subscribers

    def offer(self, message: AgentProgress, verified: Callable[[str], bool]) -> Refusal | None:
        """Relay ``message`` to the execution's streams if :func:`judge` lets it through."""
        d = message.data
        queues = list(self._subscribers.of(d.execution_id))
        if not queues:
            return None  # nobody watches here: nothing to check, nothing to count
        refusal = judge(
            self.book.state(d.execution_id, d.node_id),
            d,
            verified,
            lambda: self.rate.take(d.execution_id, d.node_id, d.attempt),
        )
        if refusal is not None:
            self._count_drop(refusal)
            return refusal
        view = {"type": PROGRESS_EVENT_TYPE, "data": progress_view(d)}
        for queue in queues:
            try:
                queue.put_nowait(view)
            except asyncio.QueueFull:
                self._count_drop("slow_client")
        self.relayed += 1
        self._count_relayed()
        return None

    def subscribe(self, execution_id: str) -> AbstractContextManager[asyncio.Queue[dict[str, Any]]]:
        return self._subscribers.subscribe(execution_id, maxsize=QUEUE_LIMIT)
