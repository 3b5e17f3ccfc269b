"""Usage over time: executions and credits per hour or day (``usage_series.py``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from ..deps import GatewayDep, ReadExecutionsDep
from ..errors import error_responses
from ..models import ID_PATTERN, UsageSeriesView
from ..usage_series import usage_range
from ..users import usage_subject
from . import answer

router = APIRouter(tags=["usage"], responses=error_responses(401, 403, 404, 422, 429, 503))


@router.get("/usage", response_model=UsageSeriesView)
async def usage_over_time(
    caller: ReadExecutionsDep,
    gateway: GatewayDep,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    bucket: Literal["hour", "day"] = "hour",
    user_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> Response:
    """Executions started, completed, failed and cancelled, and credits charged, per UTC
    hour or day from `from` (rounded down) to `to` (rounded up; default now); without
    `from`, the last 24 buckets. At most 1,000 buckets. The caller's own; the admin's:
    every user's together, or one user's with `user_id`."""
    span = usage_range(start, end, bucket, datetime.now(UTC))
    whose = await usage_subject(gateway.users.read, caller, user_id)
    return answer(await gateway.usage_series.series(whose, span))
