"""Timers owned by the orchestrator: armed from execution state, fired as commands.

The state machine records every timer (kind, node, attempt, due time) in the execution
state, which is snapshotted in the same transaction as the events. This scheduler only
mirrors those records in a heap and, when one is due, publishes a ``FireTimer`` command on
the execution's partition; the command is handled like any other input, so a timer that
fires twice (or after a restart re-armed it) changes nothing.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from spine_contracts import FireTimer, utcnow

from .domain import AnyState, Timer

Publish = Callable[[FireTimer, str], Awaitable[None]]


class TimerScheduler:
    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._heap: list[tuple[datetime, str, str]] = []  # (due, execution_id, timer_id)
        self._armed: dict[str, dict[str, Timer]] = {}  # execution_id -> timer_id -> timer
        self._context: dict[str, tuple[str | None, str | None, str | None]] = {}
        self._wakeup = asyncio.Event()

    def sync(self, state: AnyState) -> None:
        """Mirror the timers of one execution (call after every decision)."""
        timers = {} if state.terminal else dict(state.timers)
        if not timers:
            self._armed.pop(state.execution_id, None)
            self._context.pop(state.execution_id, None)
            return
        previous = self._armed.get(state.execution_id, {})
        self._armed[state.execution_id] = timers
        self._context[state.execution_id] = (state.correlation_id, state.user_id, state.trace)
        for timer_id, timer in timers.items():
            if timer_id not in previous or previous[timer_id].due_at != timer.due_at:
                heapq.heappush(self._heap, (timer.due_at, state.execution_id, timer_id))
                self._wakeup.set()

    def forget(self, execution_ids: Iterable[str]) -> None:
        for execution_id in execution_ids:
            self._armed.pop(execution_id, None)
            self._context.pop(execution_id, None)

    @property
    def pending(self) -> int:
        return sum(len(t) for t in self._armed.values())

    async def run(self) -> None:
        while True:
            now = utcnow()
            due: list[tuple[str, Timer]] = []
            while self._heap and self._heap[0][0] <= now:
                _, execution_id, timer_id = heapq.heappop(self._heap)
                timer = self._armed.get(execution_id, {}).get(timer_id)
                if timer is not None and timer.due_at <= now:
                    due.append((execution_id, timer))
            for execution_id, timer in due:
                correlation_id, tenant_id, trace = self._context.get(execution_id, (None,) * 3)
                command = FireTimer.build(
                    correlation_id=correlation_id,
                    tenant_id=tenant_id,
                    trace=trace,
                    execution_id=execution_id,
                    timer_id=timer.timer_id,
                    kind=timer.kind,
                    node_id=timer.node_id,
                    attempt=timer.attempt,
                    due_at=timer.due_at,
                )
                await self._publish(command, execution_id)
            self._wakeup.clear()
            timeout = None
            if self._heap:
                timeout = max(0.0, (self._heap[0][0] - utcnow()).total_seconds())
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass
