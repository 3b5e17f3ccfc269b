"""Executions: the list (filters, cursor paging)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from ..pages import GatewayDep, SessionDep, render

router = APIRouter()


@router.get("/executions")
async def executions(
    request: Request,
    session: SessionDep,
    gateway: GatewayDep,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    page = await gateway.get("/executions", session.key, limit=50, cursor=cursor)
    return render(request, "executions/list.html", {"page": page})
