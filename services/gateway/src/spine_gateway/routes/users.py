"""Users: created by the master key; keys are shown once."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..deps import MasterDep, ServiceDep, UserDep
from ..errors import InvalidInput
from ..models import AddCreditsRequest, CreateUserRequest

router = APIRouter(prefix="/users", tags=["users"])


@router.post("/create", status_code=201)
async def create_user(
    body: CreateUserRequest, _master: MasterDep, service: ServiceDep
) -> JSONResponse:
    user = await service.create_user(
        email=body.email,
        name=body.name,
        organization=body.organization,
        credits=body.credits,
        rate_limit=body.rate_limit,
        user_id=body.user_id,
    )
    return JSONResponse(user, status_code=201)


@router.get("/me")
async def me(user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return service.user_view(user)


@router.post("/regenerate-key")
async def regenerate_key(user: UserDep, service: ServiceDep) -> dict[str, Any]:
    return await service.rotate_key(user)


@router.post("/add-credits")
async def add_credits(
    request: Request,
    _master: MasterDep,
    service: ServiceDep,
    user_id: str | None = None,
    credits: int | None = None,
    body: Annotated[dict[str, Any] | None, Body()] = None,
) -> dict[str, Any]:
    raw = {**(body or {}), **{k: v for k, v in request.query_params.items()}}
    if user_id is not None:
        raw["user_id"] = user_id
    if credits is not None:
        raw["credits"] = credits
    try:
        parsed = AddCreditsRequest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(
            "user_id and a positive credits are required",
            extra={"errors": exc.errors(include_url=False)},
        ) from exc
    return await service.add_credits(parsed.user_id, parsed.credits)


@router.get("/{user_id}")
async def get_user(user_id: str, _master: MasterDep, service: ServiceDep) -> dict[str, Any]:
    return await service.get_user(user_id)
