"""Dependencies as ``Annotated`` aliases so routes read as signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .adapters.postgres import Row
from .service import GatewayService, Principal

# auto_error=False: a missing or malformed header is answered in the API's own error shape
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="A user key (`sk_...`) or, for the admin routes, the master key `API_KEY`.",
)


async def get_service(request: Request) -> GatewayService:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, on every request
    service: GatewayService = request.app.state.service
    return service


ServiceDep = Annotated[GatewayService, Depends(get_service)]


async def get_principal(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    token = credentials.credentials.strip() if credentials is not None else None
    return await service.authenticate(token or None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_user(request: Request, service: ServiceDep, principal: PrincipalDep) -> Row:
    user = service.require_user(principal)
    request.state.usage_user = str(user["user_id"])  # counted even when rate-limited
    request.state.rate = await service.check_rate(user)
    return user


async def get_master(service: ServiceDep, principal: PrincipalDep) -> Principal:
    service.require_master(principal)
    return principal


UserDep = Annotated[Row, Depends(get_user)]
MasterDep = Annotated[Principal, Depends(get_master)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Repeat a request safely: the same key (per user) gets the first answer.",
    ),
]
