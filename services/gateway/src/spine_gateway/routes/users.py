"""Users: created by the master key; keys are shown once."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import ValidationError

from ..deps import AccountDep, AdminDep, UsersDep
from ..errors import InvalidInput, error_responses
from ..models import (
    ID_PATTERN,
    AddCreditsRequest,
    CreateUserRequest,
    CreditsAddedView,
    LimitsRequest,
    Me,
    NewKeyView,
    NewUserView,
    UserList,
    UserView,
)
from . import answer

router = APIRouter(
    prefix="/users", tags=["users"], responses=error_responses(401, 403, 413, 422, 503)
)
_LIMITED = error_responses(429)


@router.post(
    "/create",
    status_code=201,
    response_model=NewUserView,
    responses=error_responses(409),
)
async def create_user(body: CreateUserRequest, admin: AdminDep, users: UsersDep) -> Response:
    """Admin (the master key or an admin key). The new user's `api_key` — with every user
    scope — is in this answer only; it works at once."""
    user = await users.create(
        email=body.email,
        name=body.name,
        organization=body.organization,
        credits=body.credits,
        rate_limit=body.rate_limit,
        user_id=body.user_id,
        actor=admin.actor,
        max_in_flight=body.max_in_flight,
        max_queued=body.max_queued,
    )
    return answer(user, 201)


@router.get("", response_model=UserList)
async def list_users(
    _admin: AdminDep,
    users: UsersDep,
    cursor: Annotated[
        str | None, Query(max_length=512, description="the `next_cursor` of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """Admin. Every user newest first (`created_at`, then `user_id`, descending) with
    balance and limits; never any key material. Page on with `?cursor=<next_cursor>`."""
    return answer(await users.list(cursor=cursor, limit=limit))


@router.get("/me", response_model=Me, responses=_LIMITED)
async def me(caller: AccountDep, users: UsersDep) -> Response:
    """The caller's account, credits and usage (requests total and in the last 24 hours)."""
    assert caller.user is not None
    return answer(await users.me(caller.user))


@router.post("/regenerate-key", response_model=NewKeyView, responses=_LIMITED)
async def regenerate_key(caller: AccountDep, users: UsersDep) -> Response:
    """A new secret for the key that called (same id, scopes and expiry), shown once; the
    previous secret stops working."""
    return answer(await users.rotate_key(caller))


@router.post(
    "/add-credits",
    response_model=CreditsAddedView,
    responses=error_responses(404),
)
async def add_credits(
    admin: AdminDep,
    users: UsersDep,
    user_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    credits: Annotated[int | None, Query()] = None,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> Response:
    """Admin. `user_id` and `credits` as query parameters or JSON."""
    raw = dict(body or {})
    if user_id is not None:
        raw["user_id"] = user_id
    if credits is not None:
        raw["credits"] = credits
    try:
        parsed = AddCreditsRequest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(
            "user_id and a positive credits are required",
            extra={"errors": exc.errors(include_url=False, include_context=False)},
        ) from exc
    return answer(await users.add_credits(parsed.user_id, parsed.credits, admin.actor))


@router.patch("/{user_id}/limits", response_model=UserView, responses=error_responses(404))
async def set_limits(
    user_id: Annotated[str, Path(pattern=ID_PATTERN)],
    body: LimitsRequest,
    admin: AdminDep,
    users: UsersDep,
) -> Response:
    """Admin. A user's `max_in_flight` (executions running at once; beyond it they queue
    with their credits held) and `max_queued` (beyond it execute answers 503 with
    `Retry-After`); a field left out keeps its value, `null` in the answer is the default."""
    return answer(await users.set_limits(user_id, body.max_in_flight, body.max_queued, admin.actor))


@router.get("/{user_id}", response_model=UserView, responses=error_responses(404))
async def get_user(
    user_id: Annotated[str, Path(pattern=ID_PATTERN)], _admin: AdminDep, users: UsersDep
) -> Response:
    """Admin."""
    return answer(await users.get(user_id))
