"""Usage: the balance, and executions and credits over time as a server-drawn chart."""

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
    buckets = series.get("buckets") or []
    bucket = str(series.get("bucket") or params["bucket"])
    rows = [{**b, "name": chart.bucket_name(str(b.get("start", "")), bucket)} for b in buckets]
    context = {
        "me": me,
        "range": range,
        "ranges": [(key, label) for key, (_, _, label) in RANGES.items()],
        "range_label": RANGES[range][2],
        "totals": series.get("totals") or {},
        "executions": chart.bars(buckets, bucket, chart.EXECUTION_SERIES),
        "credits": chart.bars(buckets, bucket, chart.CREDIT_SERIES),
        "rows": rows,
        "bucket": bucket,
    }
    return render(request, "usage/page.html", context)
