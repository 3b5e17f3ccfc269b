"""Usage: the balance and token totals, and executions, credits and model tokens over time
as server-drawn charts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from .. import chart
from ..pages import GatewayDep, SessionDep, render

router = APIRouter()

RANGES: dict[str, tuple[str, int, str]] = {
    "24h": ("hour", 24, "Last 24 hours"),
    "7d": ("day", 7, "Last 7 days"),
    "30d": ("day", 30, "Last 30 days"),
}


def span(choice: str, now: datetime) -> dict[str, str]:
    """The ``GET /usage`` parameters of a range: whole buckets ending with the current one."""
    bucket, count, _ = RANGES[choice]
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    now = now.astimezone(UTC)
    current = (
        now.replace(minute=0, second=0, microsecond=0)
        if bucket == "hour"
        else now.replace(hour=0, minute=0, second=0, microsecond=0)
    )
    start = current - (count - 1) * step
    return {"from": start.isoformat(), "to": now.isoformat(), "bucket": bucket}


@router.get("/usage")
async def usage(
    request: Request,
    session: SessionDep,
    gateway: GatewayDep,
    range: Annotated[str, Query(max_length=10)] = "24h",  # noqa: A002 — the page's query name
) -> Response:
    if range not in RANGES:  # an odd link: the default range rather than an error page
        range = "24h"  # noqa: A001
    params = span(range, datetime.now(UTC))
    series: dict[str, Any] = await gateway.get("/usage", session.key, **params)
    me = None if session.admin else await gateway.get("/users/me", session.key)
    return render(request, "usage/page.html", page_context(series, me, range, params["bucket"]))


def page_context(
    series: dict[str, Any], me: dict[str, Any] | None, choice: str, asked_bucket: str
) -> dict[str, Any]:
    """What the page shows of a ``GET /usage`` answer (and the user's ``/users/me``)."""
    buckets = series.get("buckets") or []
    bucket = str(series.get("bucket") or asked_bucket)
    rows = [{**b, "name": chart.bucket_name(str(b.get("start", "")), bucket)} for b in buckets]
    return {
        "me": me,
        "range": choice,
        "ranges": [(key, label) for key, (_, _, label) in RANGES.items()],
        "range_label": RANGES[choice][2],
        "totals": series.get("totals") or {},
        "executions": chart.bars(buckets, bucket, chart.EXECUTION_SERIES),
        "credits": chart.bars(buckets, bucket, chart.CREDIT_SERIES),
        "tokens": chart.bars(buckets, bucket, chart.TOKEN_SERIES),
        "rows": rows,
        "bucket": bucket,
    }
