"""The audit trail: who did what (the admin: everyone; a user: their own account)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from ..deps import AuditDep, AuditServiceDep
from ..errors import error_responses
from ..models import ID_PATTERN, AuditPage
from . import answer

router = APIRouter(tags=["audit"], responses=error_responses(401, 403, 422, 429, 503))


@router.get("/audit", response_model=AuditPage)
async def audit(
    caller: AuditDep,
    service: AuditServiceDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_\-]+$")] = None,
    tenant: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> Response:
    """Newest first; `cursor` is the previous page's `next_cursor`; `tenant` (admin only)
    narrows to one account."""
    return answer(await service.page(caller, tenant=tenant, limit=limit, cursor=cursor))
