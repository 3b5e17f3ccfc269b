"""Read-your-writes: the one way a request waits until this replica's read model holds an
event — "until projector P has applied the record at (partition, offset)".

Every wait names a position and ends in :meth:`ReadYourWrites.applied`:

* a record this request published itself (a flow written): the producer's acknowledgement
  gives its position;
* an event another service writes in answer to a command (a user created, an execution
  started, a cancel's outcome): its position is learnt when the projector decodes it, from
  the :class:`~.projection.Marks` index (kind, key) → position;
* what a stream of this replica already showed of an execution: the live trail knows the
  position of the last event it decoded (``live.LiveTrail.pending``).

One thing is kept outside, on purpose: an execution answered by *another* replica leaves a
mark in Redis (``RedisStore.mark_accepted``). This replica has decoded nothing of it yet,
so it has no position to wait for; the mark tells it to wait for the start rather than
answer 404 (``ExecutionsService.visible``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka import TopicPartition
from spine_contracts import Message
from spine_servicekit.projector import Projector

from .live import LiveTrail, Mark
from .projection import Marks


class ReadYourWrites:
    def __init__(self, marks: Marks, live: LiveTrail, timeout_s: float) -> None:
        self.marks = marks
        self.live = live
        self.timeout_s = timeout_s

    async def applied(self, projector: Projector, mark: Mark, wait_s: float | None = None) -> None:
        """Until ``projector`` has applied the record at ``mark`` (``TimeoutError`` after
        ``wait_s``, by default the projection timeout)."""
        tp, nxt = mark
        async with asyncio.timeout(wait_s or self.timeout_s):
            await projector.wait_for_offsets({tp: nxt})

    async def event(
        self, projector: Projector, kind: str, key: str, wait_s: float | None = None
    ) -> Message | None:
        """Until ``projector`` has applied the first event indexed as (``kind``, ``key``);
        the event itself when the projection keeps it (an outcome), else ``None``."""

        def reached(applied: Mapping[TopicPartition, int]) -> bool:
            mark = self.marks.get(kind, key)
            return mark is not None and applied.get(mark[0], -1) >= mark[1]

        async with asyncio.timeout(wait_s or self.timeout_s):
            await projector.wait_for(reached)
        return self.marks.message(kind, key)

    async def seen(self, projector: Projector, execution_id: str) -> bool:
        """Until the read model holds every event of the execution this replica decoded (a
        read after a stream's event shows at least that event); ``False`` if it did not in
        time (the read goes on with what is stored)."""
        mark = self.live.pending(execution_id, projector.applied_offsets())
        if mark is None:
            return True
        try:
            await self.applied(projector, mark)
        except TimeoutError:
            return False
        return True

    async def caught_up(self, projector: Projector) -> None:
        """Until ``projector`` has applied everything on its topics now (used after a reply
        from auth, which commits the event before it replies)."""
        async with asyncio.timeout(self.timeout_s):
            await projector.wait_until_caught_up()
