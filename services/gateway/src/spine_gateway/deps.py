"""Dependencies as ``Annotated`` aliases so routes read as signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from .adapters.postgres import Row
from .keys import bearer_token
from .service import GatewayService, Principal


def get_service(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


ServiceDep = Annotated[GatewayService, Depends(get_service)]


async def get_principal(
    service: ServiceDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return await service.authenticate(bearer_token(authorization))


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_user(request: Request, service: ServiceDep, principal: PrincipalDep) -> Row:
    user = service.require_user(principal)
    request.state.rate = await service.check_rate(user)
    return user


async def get_master(service: ServiceDep, principal: PrincipalDep) -> Principal:
    service.require_master(principal)
    return principal


UserDep = Annotated[Row, Depends(get_user)]
MasterDep = Annotated[Principal, Depends(get_master)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
