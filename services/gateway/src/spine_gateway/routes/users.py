"""Users: created by the master key; keys are shown once."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..deps import MasterDep, ServiceDep, UserDep
from ..errors import InvalidInput, error_responses
from ..models import (
    ID_PATTERN,
    AddCreditsRequest,
    CreateUserRequest,
    CreditsAddedView,
    KeyRotated,
    Me,
    UserCreated,
    UserView,
)

router = APIRouter(
    prefix="/users", tags=["users"], responses=error_responses(400, 401, 403, 413, 422, 503)
)
_LIMITED = error_responses(429)


@router.post(
    "/create",
    status_code=201,
    response_model=UserCreated,
    responses=error_responses(409),
)
async def create_user(
    body: CreateUserRequest, _master: MasterDep, service: ServiceDep
) -> JSONResponse:
    """Master key. The new user's `api_key` is in this answer only; it works at once."""
    user = await service.create_user(
        email=body.email,
        name=body.name,
        organization=body.organization,
        credits=body.credits,
        rate_limit=body.rate_limit,
        user_id=body.user_id,
    )
    return JSONResponse(user, status_code=201)


@router.get("/me", response_model=Me, responses=_LIMITED)
async def me(user: UserDep, service: ServiceDep) -> dict[str, Any]:
    """The caller's account, credits and usage (requests total and in the last 24 hours)."""
    return await service.me(user)


@router.post("/regenerate-key", response_model=KeyRotated, responses=_LIMITED)
async def regenerate_key(user: UserDep, service: ServiceDep) -> dict[str, Any]:
    """A new key, shown once; the previous one stops working."""
    return await service.rotate_key(user)


@router.post(
    "/add-credits",
    response_model=CreditsAddedView,
    responses=error_responses(404),
)
async def add_credits(
    _master: MasterDep,
    service: ServiceDep,
    user_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    credits: Annotated[int | None, Query()] = None,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> dict[str, Any]:
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
    return await service.add_credits(parsed.user_id, parsed.credits)


@router.get("/{user_id}", response_model=UserView, responses=error_responses(404))
async def get_user(
    user_id: Annotated[str, Path(pattern=ID_PATTERN)], _master: MasterDep, service: ServiceDep
) -> dict[str, Any]:
    """Master key."""
    return await service.get_user(user_id)
