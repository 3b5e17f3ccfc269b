"""Admin (an admin session only; anyone else gets the 404 page): users with balances and
limits, adding credits, and the way to system flows and agents."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import Response

from ..gateway import GatewayError
from ..pages import CheckedDep, GatewayDep, SessionDep, render
from ..sessions import Session

router = APIRouter()
PAGE = 50


def _admin_only(session: Session) -> None:
    if not session.admin:
        raise HTTPException(404, "Not found")


async def _page(
    request: Request,
    session: Session,
    gateway: GatewayDep,
    cursor: str | None,
    *,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    try:
        page = await gateway.get("/users", session.key, limit=PAGE, cursor=cursor)
    except GatewayError as exc:
        if exc.status != 422 or not cursor:
            raise
        # a stale or edited cursor: the first page, saying why
        page = await gateway.get("/users", session.key, limit=PAGE)
        cursor, error, status = None, exc.message, 422
    context = {"page": page, "cursor": cursor or "", "notice": notice, "error": error}
    return render(request, "admin/page.html", context, status)


@router.get("/admin")
async def admin(
    request: Request,
    session: SessionDep,
    gateway: GatewayDep,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    _admin_only(session)
    return await _page(request, session, gateway, cursor)


@router.post("/admin/credits")
async def add_credits(
    request: Request,
    session: CheckedDep,
    gateway: GatewayDep,
    user_id: Annotated[str, Form(max_length=128)] = "",
    credits: Annotated[str, Form(max_length=20)] = "",
    cursor: Annotated[str, Form(max_length=512)] = "",
) -> Response:
    """Add credits to a user; the page answers with the user's new balance."""
    _admin_only(session)
    try:
        amount = int(credits.strip())
    except ValueError:
        amount = 0
    if amount <= 0:
        return await _page(
            request,
            session,
            gateway,
            cursor or None,
            error="Credits must be a whole number above zero.",
            status=422,
        )
    try:
        user = await gateway.post(
            "/users/add-credits", session.key, {"user_id": user_id, "credits": amount}
        )
    except GatewayError as exc:
        if exc.status == 401:
            raise
        status = exc.status if exc.status in (403, 404, 422, 429, 503) else 502
        return await _page(
            request, session, gateway, cursor or None, error=exc.message, status=status
        )
    notice = (
        f"Added {user.get('credits_added', amount)} credits to {user.get('email') or user_id}: "
        f"the balance is now {user.get('balance')}."
    )
    return await _page(request, session, gateway, cursor or None, notice=notice)
