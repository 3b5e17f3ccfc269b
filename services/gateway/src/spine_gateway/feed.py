"""The live feed of executions' status changes (``GET /executions/stream``; a WebSocket
variant reuses :meth:`ExecutionFeed.follow`).

The feed reads ``execution_feed`` (projection.py): one row per event that changed an
execution's status, keyed by the event's Kafka partition and offset. Per-execution sequence
numbers cannot resume a feed that spans executions, and a counter in the read model would
not survive a rebuild; the event's position does. So the **cursor** is a position in every
partition of the execution events: ``"<partition>:<offset>,..."`` (e.g. ``"0:41,1:17"``),
the last offset delivered per partition (``-1``: none yet; a partition not named: from its
start). Within a partition the rows commit in offset order, so "after the cursor" never
skips a row committed later. Clients treat it as opaque.

Each item the feed yields is a :class:`FeedEvent`:

* first ``feed.ready``: ``{"cursor"}``, where the feed starts (resume from it even if no
  change comes before the connection drops);
* then one per status change, ``type`` the event that made it (``execution.queued``,
  ``execution.started``, ``execution.node_waiting_input``, ``execution.input_received``,
  ``execution.completed``, ``execution.failed``, ``execution.cancelled``) and ``data``
  ``{"cursor", "execution_id", "user_id", "flow_id", "status", "type", "seq",
  "occurred_at"}`` — ``status`` the execution's status after it (``queued``, ``running``,
  ``waiting_input``, ``completed``, ``failed``, ``cancelled``), ``seq`` the event's
  sequence number in the execution's own trail.

Without a cursor the feed starts at what the read model holds now. It waits for the
executions projector's committed batches (:meth:`Projector.wait_for`), never on a timer.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import TopicPartition
from spine_servicekit.projector import Projector, ProjectorError

from .executions import KEY_GONE, while_valid

#: partition -> the last offset delivered (-1: nothing yet)
Cursor = dict[int, int]

READY = "feed.ready"
#: rows read per partition at a time; a client behind by more reads again without waiting
PAGE = 200
MAX_CURSOR_CHARS = 2048
_MAX_PARTITION = 100_000
_MAX_OFFSET = 2**63 - 1
_PAIR = re.compile(r"^(\d{1,6}):(-1|\d{1,19})$")


class CursorError(ValueError):
    """A feed cursor that is not one the feed gave."""


def parse_cursor(text: str) -> Cursor:
    """``"0:41,1:17"`` → ``{0: 41, 1: 17}``; :class:`CursorError` for anything else."""
    if not text or len(text) > MAX_CURSOR_CHARS:
        raise CursorError(f"a feed cursor has 1 to {MAX_CURSOR_CHARS} characters")
    cursor: Cursor = {}
    for pair in text.split(","):
        match = _PAIR.match(pair.strip())
        if match is None:
            raise CursorError(f"not a feed cursor: {pair!r} is not <partition>:<offset>")
        partition, offset = int(match[1]), int(match[2])
        if partition > _MAX_PARTITION or offset > _MAX_OFFSET:
            raise CursorError(f"not a feed cursor: {pair!r} is out of range")
        if partition in cursor:
            raise CursorError(f"not a feed cursor: partition {partition} twice")
        cursor[partition] = offset
    return cursor


def format_cursor(cursor: Mapping[int, int]) -> str:
    return ",".join(f"{p}:{o}" for p, o in sorted(cursor.items()))


@dataclass(frozen=True)
class FeedEvent:
    """One item of the feed: the cursor after it, its type, and what a client is sent."""

    cursor: str
    type: str
    data: dict[str, Any]


def _event(row: Mapping[str, Any], cursor: str) -> FeedEvent:
    occurred: datetime = row["occurred_at"]
    data = {
        "cursor": cursor,
        "execution_id": row["execution_id"],
        "user_id": row["user_id"],
        "flow_id": row["flow_id"],
        "status": row["status"],
        "type": row["type"],
        "seq": row["seq"],
        "occurred_at": occurred.isoformat(),
    }
    return FeedEvent(cursor, row["type"], data)


def in_order(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Each partition's rows in offset order (what the cursor needs), partitions merged
    by the events' times (what a reader expects)."""
    by_partition: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_partition.setdefault(row["kafka_partition"], []).append(row)
    lanes = [sorted(lane, key=lambda r: r["kafka_offset"]) for lane in by_partition.values()]
    return list(heapq.merge(*lanes, key=lambda r: (r["occurred_at"], r["kafka_partition"])))


def moved_from(
    before: Mapping[TopicPartition, int],
) -> Callable[[Mapping[TopicPartition, int]], bool]:
    """A :meth:`Projector.wait_for` predicate: a batch committed since ``before``."""
    snapshot = dict(before)
    return lambda applied: applied != snapshot


_AFTER = """
SELECT f.* FROM unnest($1::int[], $2::bigint[]) AS c(p, o)
CROSS JOIN LATERAL (
    SELECT * FROM execution_feed AS f
    WHERE {who} f.kafka_partition = c.p AND f.kafka_offset > c.o
    ORDER BY f.kafka_offset LIMIT $3
) AS f
"""
_AFTER_ALL = _AFTER.format(who="")
# a statement of its own: a generic plan of "$4 IS NULL OR ..." would not use the index
_AFTER_USER = _AFTER.format(who="f.user_id = $4 AND")


class ExecutionFeed:
    """The feed over the gateway's read model; ``projector`` is the executions projector."""

    def __init__(self, pool: asyncpg.Pool, projector: Projector) -> None:
        self._pool = pool
        self._projector = projector

    def now(self) -> Cursor:
        """Where the read model is: every partition's last applied offset."""
        return {tp.partition: offset - 1 for tp, offset in self._applied().items()}

    def _applied(self) -> dict[TopicPartition, int]:
        return self._projector.applied_offsets()

    async def after(
        self, user_id: str | None, cursor: Mapping[int, int], limit: int = PAGE
    ) -> list[Mapping[str, Any]]:
        """Up to ``limit`` rows per partition after ``cursor`` (``user_id`` None: every
        tenant's), in feed order."""
        partitions = sorted(set(cursor) | {tp.partition for tp in self._applied()})
        offsets = [cursor.get(p, -1) for p in partitions]
        if user_id is None:
            rows = await self._pool.fetch(_AFTER_ALL, partitions, offsets, limit)
        else:
            rows = await self._pool.fetch(_AFTER_USER, partitions, offsets, limit, user_id)
        return in_order([dict(r) for r in rows])

    async def follow(
        self, user_id: str | None, cursor: Mapping[int, int] | None = None
    ) -> AsyncIterator[FeedEvent]:
        """``feed.ready``, then every status change of ``user_id``'s executions (None:
        every tenant's) after ``cursor`` (None: from now), as the read model applies them;
        ends when the projector stops."""
        position: Cursor = dict(cursor) if cursor is not None else self.now()
        for tp in self._applied():  # every partition named: a resume knows them all
            position.setdefault(tp.partition, -1)
        yield FeedEvent(format_cursor(position), READY, {"cursor": format_cursor(position)})
        while True:
            # the progress before the read: a batch committed after it wakes the wait below
            before = self._applied()
            rows = await self.after(user_id, position)
            for row in rows:
                position[row["kafka_partition"]] = row["kafka_offset"]
                yield _event(row, format_cursor(position))
            counts: dict[int, int] = {}
            for row in rows:
                counts[row["kafka_partition"]] = counts.get(row["kafka_partition"], 0) + 1
            if any(n >= PAGE for n in counts.values()):
                continue  # a page was full: more is there already
            try:
                await self._projector.wait_for(moved_from(before))
            except ProjectorError:
                return  # the gateway is stopping (or its read model failed): the client
                # reconnects, with its cursor, to a replica that serves


async def sse(
    events: AsyncIterator[FeedEvent], still_valid: Callable[[], Awaitable[bool]]
) -> AsyncIterator[dict[str, str]]:
    """The feed as Server-Sent Events (``id`` the cursor, ``event`` the type), until the
    client goes, or, within ``REVALIDATE_S``, its key is revoked or expires."""
    async for event in while_valid(events, still_valid):
        if event is None:
            yield {"event": "error", "data": KEY_GONE}
            return
        yield {"id": event.cursor, "event": event.type, "data": orjson.dumps(event.data).decode()}
