"""Users: created by the master key; keys are shown once."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Response
from pydantic import ValidationError

from ..deps import MasterDep, UserDep, UsersDep
from ..errors import InvalidInput, error_responses
from ..models import (
    ID_PATTERN,
    AddCreditsRequest,
    CreateUserRequest,
    CreditsAddedView,
    Me,
    NewKeyView,
    NewUserView,
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
async def create_user(body: CreateUserRequest, _master: MasterDep, users: UsersDep) -> Response:
    """Master key. The new user's `api_key` is in this answer only; it works at once."""
    user = await users.create(
        email=body.email,
        name=body.name,
        organization=body.organization,
        credits=body.credits,
        rate_limit=body.rate_limit,
        user_id=body.user_id,
    )
    return answer(user, 201)


@router.get("/me", response_model=Me, responses=_LIMITED)
async def me(user: UserDep, users: UsersDep) -> Response:
    """The caller's account, credits and usage (requests total and in the last 24 hours)."""
    return answer(await users.me(user))


@router.post("/regenerate-key", response_model=NewKeyView, responses=_LIMITED)
async def regenerate_key(user: UserDep, users: UsersDep) -> Response:
    """A new key, shown once; the previous one stops working."""
    return answer(await users.rotate_key(user))


@router.post(
    "/add-credits",
    response_model=CreditsAddedView,
    responses=error_responses(404),
)
async def add_credits(
    _master: MasterDep,
    users: UsersDep,
    user_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    credits: Annotated[int | None, Query()] = None,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> Response:
    """Master key. `user_id` and `credits` as query parameters or JSON."""
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
    return answer(await users.add_credits(parsed.user_id, parsed.credits))


@router.get("/{user_id}", response_model=UserView, responses=error_responses(404))
async def get_user(
    user_id: Annotated[str, Path(pattern=ID_PATTERN)], _master: MasterDep, users: UsersDep
) -> Response:
    """Master key."""
    return answer(await users.get(user_id))
