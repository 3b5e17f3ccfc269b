"""Execution events as the gateway decodes them, before its read model has stored them.

A stream is fed from here (the gateway reads the execution events for its streams),
so the client sees an event a PostgreSQL transaction sooner; the stored trail fills in what
came before the stream opened and any gap. Reads must never show less than a stream already
showed: :meth:`LiveTrail.pending` names the offset the read model has to reach first.

Pure: no Kafka or PostgreSQL here; the projector calls :meth:`LiveTrail.tap` with each
decoded batch and the service awaits its own projector.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from aiokafka import TopicPartition
from spine_contracts import Message
from spine_servicekit.projector import Incoming

from .subscribers import Subscribers

Mark = tuple[TopicPartition, int]
View = dict[str, Any]

TERMINAL_EVENT_TYPES = frozenset({"execution.completed", "execution.failed", "execution.cancelled"})
STARTED_EVENT_TYPE = "execution.started"
QUEUED_EVENT_TYPE = "execution.queued"


def event_view(seq: int, type_: str, data: Any, occurred_at: datetime | None) -> View:
    """One trail event as the API shows it (``GET …/events`` and the stream)."""
    return {
        "seq": seq,
        "type": type_,
        "data": data,
        "occurred_at": occurred_at.isoformat() if occurred_at is not None else None,
    }


def live_view(message: Message) -> View:
    d: Any = message.data
    return event_view(d.seq, message.type, d.model_dump(mode="json"), message.occurred_at)


class LiveTrail:
    """Subscribers per execution, and the last decoded position of each execution's events."""

    def __init__(self, limit: int = 100_000) -> None:
        self._subscribers: Subscribers[Message] = Subscribers()
        self._seen: dict[str, Mark] = {}
        self._limit = limit

    def tap(self, batch: Sequence[Incoming]) -> None:
        """Called by the executions projector with every decoded batch, before it applies it."""
        for item in batch:
            eid: str | None = getattr(item.message.data, "execution_id", None)
            if eid is None:
                continue
            self._seen.pop(eid, None)  # re-inserted: the dict stays in order of recency
            if len(self._seen) >= self._limit:  # bounded: the least recent half goes
                for old in list(self._seen)[: self._limit // 2]:
                    del self._seen[old]
            self._seen[eid] = (TopicPartition(item.topic, item.partition), item.offset + 1)
            for queue in self._subscribers.of(eid):
                queue.put_nowait(item.message)

    def pending(self, execution_id: str, applied: Mapping[TopicPartition, int]) -> Mark | None:
        """Where the read model must have got to before a read of the execution shows at least
        what its stream showed; None when it is there already."""
        mark = self._seen.get(execution_id)
        if mark is None or applied.get(mark[0], -1) >= mark[1]:
            return None
        return mark

    def subscribe(self, execution_id: str) -> AbstractContextManager[asyncio.Queue[Message]]:
        return self._subscribers.subscribe(execution_id)

    def subscribers(self) -> int:
        return self._subscribers.count()


async def await_started(queue: asyncio.Queue[Message]) -> tuple[str, datetime | None]:
    """The status and creation time the execute answer gives, once this replica decodes the
    execution's start: what its read-model row will say (``running``, or the end if the
    start and the end came in one batch). ``queue`` is subscribed before the command goes."""
    while (message := await queue.get()).type not in (STARTED_EVENT_TYPE, QUEUED_EVENT_TYPE):
        pass
    # a queued execution is answered at once: it starts when auth releases it
    status = "queued" if message.type == QUEUED_EVENT_TYPE else "running"
    while not queue.empty():  # the rest of the start's batch is queued already
        later = queue.get_nowait()
        if later.type in TERMINAL_EVENT_TYPES:
            status = later.type.removeprefix("execution.")
        elif later.type == STARTED_EVENT_TYPE and status == "queued":
            status = "running"  # released in the same batch
    return status, message.occurred_at


async def follow_trail(
    queue: asyncio.Queue[Message],
    stored_after: Callable[[int], Awaitable[Sequence[View]]],
    catch_up: Callable[[], Awaitable[None]],
    *,
    after: int,
    idle_s: float,
) -> AsyncGenerator[View, None]:
    """The trail after ``after`` until its terminal event: first what is stored, then live
    events in ``seq`` order. Called once ``queue`` is subscribed: ``catch_up`` first waits
    until the store holds every event decoded before that, so none falls between the store
    and the queue (the terminal one would not be followed by a gap that reveals it). A live
    event past a gap still waits for ``catch_up`` and reads the store again; so does a quiet
    spell of ``idle_s``, in case an event never reached this replica's tap."""
    last = after
    await catch_up()
    while True:
        for view in await stored_after(last):
            last = int(view["seq"])
            yield view
            if view["type"] in TERMINAL_EVENT_TYPES:
                return
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    message = await queue.get()
            except TimeoutError:
                break
            seq = int(message.data.seq)  # type: ignore[attr-defined]
            if seq <= last:
                continue  # already sent (from the store, or a repeat)
            if seq > last + 1:
                await catch_up()
                break
            last = seq
            yield live_view(message)
            if message.type in TERMINAL_EVENT_TYPES:
                return
