"""Usage over time (``GET /usage``): executions started and ended, and credits and model
tokens charged, per hour or day, from the read model.

Buckets are UTC hours or days: ``from`` is rounded down and ``to`` up to a bucket's edge,
so a chart's bars line up whatever the request's times; without ``from`` the series is the
24 buckets up to and including the current one. An execution counts as started in the
bucket of its creation, as completed/failed/cancelled in that of its end; its credits and
tokens in that of its settle (``credits_charged``, projected from auth's
``CreditsSettled``, which carries the execution's trusted token counts: docs/credits.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg

from .errors import InvalidInput
from .models import UsageSeriesView

Bucket = Literal["hour", "day"]
STEP: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_BUCKETS = 1000
DEFAULT_BUCKETS = 24
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class UsageRange:
    """A validated request: ``count`` buckets of ``step`` from ``start`` (edges aligned)."""

    start: datetime
    end: datetime
    bucket: str
    step: timedelta
    count: int


def _utc(value: datetime) -> datetime:
    """A time without an offset is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def floor_to(value: datetime, step: timedelta) -> datetime:
    return _EPOCH + ((value - _EPOCH) // step) * step


def ceil_to(value: datetime, step: timedelta) -> datetime:
    down = floor_to(value, step)
    return down if down == value else down + step


def usage_range(
    start: datetime | None, end: datetime | None, bucket: str, now: datetime
) -> UsageRange:
    """The buckets a request asks for, or :class:`InvalidInput` (422): an unknown bucket,
    ``from`` not before ``to``, or more than :data:`MAX_BUCKETS` buckets."""
    step = STEP.get(bucket)
    if step is None:
        raise InvalidInput(f"bucket must be one of {sorted(STEP)}, not {bucket!r}")
    try:
        last = _utc(end) if end is not None else _utc(now)
        first = _utc(start) if start is not None else None
        if first is not None and first >= last:
            raise InvalidInput("from must be before to")
        upper = ceil_to(last, step)
        lower = floor_to(first, step) if first is not None else upper - DEFAULT_BUCKETS * step
    except OverflowError as exc:  # an edge before year 1 or after 9999
        raise InvalidInput("from and to must lie within the years 1 to 9999") from exc
    count = (upper - lower) // step
    if count > MAX_BUCKETS:
        raise InvalidInput(
            f"{count} {bucket} buckets asked for; at most {MAX_BUCKETS}: narrow from/to "
            "or use a larger bucket"
        )
    return UsageRange(lower, upper, bucket, step, count)


# Counts per bucket index (``i``); every table's range is the index's, and the series is
# generate_series of the indexes, so an empty bucket is a row of zeros.
_SERIES = """
WITH started AS (
    SELECT floor(extract(epoch FROM created_at - $1) / $3)::int AS i, count(*) AS n
    FROM executions WHERE {who} created_at >= $1 AND created_at < $2 GROUP BY 1
), ended AS (
    SELECT floor(extract(epoch FROM completed_at - $1) / $3)::int AS i,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled
    FROM executions WHERE {who} completed_at >= $1 AND completed_at < $2 GROUP BY 1
), charged AS (
    SELECT floor(extract(epoch FROM settled_at - $1) / $3)::int AS i, sum(charged) AS credits,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
    FROM credits_charged WHERE {who} settled_at >= $1 AND settled_at < $2 GROUP BY 1
)
SELECT b.i, COALESCE(s.n, 0) AS started, COALESCE(e.completed, 0) AS completed,
       COALESCE(e.failed, 0) AS failed, COALESCE(e.cancelled, 0) AS cancelled,
       COALESCE(c.credits, 0) AS credits, COALESCE(c.input_tokens, 0) AS input_tokens,
       COALESCE(c.output_tokens, 0) AS output_tokens
FROM generate_series(0, $4 - 1) AS b(i)
LEFT JOIN started AS s ON s.i = b.i
LEFT JOIN ended AS e ON e.i = b.i
LEFT JOIN charged AS c ON c.i = b.i
ORDER BY b.i
"""
# one statement per case: a generic plan of "$5 IS NULL OR user_id = $5" scans every row
_SERIES_ALL = _SERIES.format(who="")
_SERIES_USER = _SERIES.format(who="user_id = $5 AND")

COUNTS = ("started", "completed", "failed", "cancelled", "credits", "input_tokens", "output_tokens")


class UsageSeries:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def series(self, user_id: str | None, span: UsageRange) -> UsageSeriesView:
        """The buckets and their totals (``user_id`` None: every user's together)."""
        args: list[Any] = [span.start, span.end, span.step.total_seconds(), span.count]
        if user_id is None:
            rows = await self._pool.fetch(_SERIES_ALL, *args)
        else:
            rows = await self._pool.fetch(_SERIES_USER, *args, user_id)
        buckets = [
            {
                "start": (span.start + r["i"] * span.step).isoformat(),
                **{name: int(r[name]) for name in COUNTS},
                "tokens": int(r["input_tokens"]) + int(r["output_tokens"]),
            }
            for r in rows
        ]
        totals = {name: sum(b[name] for b in buckets) for name in (*COUNTS, "tokens")}
        return UsageSeriesView.model_validate(
            {
                "user_id": user_id,
                "bucket": span.bucket,
                "from": span.start.isoformat(),
                "to": span.end.isoformat(),
                "buckets": buckets,
                "totals": totals,
            }
        )
