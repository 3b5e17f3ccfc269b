"""Operator aggregates folded from the event topics (pure, no I/O).

``Aggregates.apply(message)`` counts executions by outcome, durations per flow, node
latency per agent, credits spent and active agents; ``summary()`` is what the compacted
summary topic (and the gateway's ``/metrics`` JSON) carries.

Duplicates: ``apply`` remembers the last 200,000 message ids it folded and ignores a
message it has seen, so a message published twice is counted once. The dedupe record
and the aggregates change in the same synchronous step and are lost together: after a
restart the service folds its topics again from offset 0 (they are kept forever or
compacted), which recomputes both exactly.
"""

from __future__ import annotations

import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

from spine_contracts import (
    AgentDeregistered,
    AgentRegistered,
    AgentStatusChanged,
    CreditsSettled,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    Message,
    NodeCompleted,
)

OUTCOMES = {
    ExecutionCompleted: "completed",
    ExecutionFailed: "failed",
    ExecutionCancelled: "cancelled",
}


@dataclass
class RecentIds:
    """The last ``limit`` message ids folded, as 128-bit ints: a set to look them up and a
    queue to forget the oldest (~19 MB for 200,000, against ~44 MB as ``UUID`` keys of an
    ``OrderedDict``)."""

    limit: int = 200_000
    _keys: set[int] = field(default_factory=set)
    _order: deque[int] = field(default_factory=deque)

    def add(self, message_id: uuid.UUID) -> bool:
        """Remember ``message_id``; False if it is remembered already."""
        key = message_id.int
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self.limit:
            self._keys.discard(self._order.popleft())
        return True

    def __len__(self) -> int:
        return len(self._order)


@dataclass
class Aggregates:
    started: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    flow_of: dict[str, str] = field(default_factory=dict)
    #: the count and sum of execution durations: their mean without keeping every one (a list
    #: per flow grew with the history, and every summary sorted all of it)
    durations: int = 0
    durations_total_ms: float = 0.0
    credits_spent: int = 0
    active_agents: set[str] = field(default_factory=set)
    duplicates: int = 0
    seen: RecentIds = field(default_factory=RecentIds)

    def apply(self, message: Message) -> list[tuple[str, str, float, str]]:
        """Fold one event; return Prometheus observations ``(metric, label, value, kind)``.

        A message whose id was folded before changes nothing and observes nothing.
        """
        out: list[tuple[str, str, float, str]] = []
        if not self.seen.add(message.message_id):
            self.duplicates += 1
            return out
        if isinstance(message, ExecutionStarted):
            self.started += 1
            self.flow_of[message.data.execution_id] = message.data.flow_id
            out.append(("executions_started", message.data.flow_id, 1, "counter"))
        elif type(message) in OUTCOMES:
            outcome = OUTCOMES[type(message)]
            self.outcomes[outcome] += 1
            flow = self.flow_of.pop(message.data.execution_id, "unknown")  # type: ignore[attr-defined]
            out.append(("executions_finished", f"{flow}|{outcome}", 1, "counter"))
            duration = message.data.duration_ms  # type: ignore[attr-defined]
            if duration is not None:
                self.durations += 1
                self.durations_total_ms += duration
                out.append(("execution_duration", flow, duration / 1000, "histogram"))
        elif isinstance(message, NodeCompleted) and message.data.agent_id:
            if message.data.duration_ms is not None:
                out.append(
                    (
                        "node_latency",
                        message.data.agent_id,
                        message.data.duration_ms / 1000,
                        "histogram",
                    )
                )
        elif isinstance(message, CreditsSettled):
            self.credits_spent += message.data.charged
            out.append(("credits_spent", "", message.data.charged, "counter"))
        elif isinstance(message, (AgentRegistered, AgentStatusChanged, AgentDeregistered)):
            d = message.data
            if d.registered and d.active:
                self.active_agents.add(d.agent.agent_id)
            else:
                self.active_agents.discard(d.agent.agent_id)
        return out

    def summary(self) -> dict[str, float | None]:
        finished = sum(self.outcomes.values())
        return {
            "executions_total": float(self.started),
            "executions_completed": float(self.outcomes["completed"]),
            "executions_failed": float(self.outcomes["failed"]),
            "executions_cancelled": float(self.outcomes["cancelled"]),
            "success_rate": self.outcomes["completed"] / finished if finished else None,
            "failure_rate": self.outcomes["failed"] / finished if finished else None,
            "average_execution_ms": (
                self.durations_total_ms / self.durations if self.durations else None
            ),
            "active_agents": float(len(self.active_agents)),
            "credits_spent": float(self.credits_spent),
        }
