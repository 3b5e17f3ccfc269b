"""Dependencies as ``Annotated`` aliases so routes read as signatures: who is calling and
the action the route performs (``Allowed(Action.X)``; for ``/status`` and ``/metrics`` the
view ``StatusAccessDep``/``MetricsAccessDep`` grants — both decided by :mod:`.policy`), and
the resource services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .agents import AgentsService
from .apikeys import KeysService
from .audit import AuditService
from .executions import ExecutionsService
from .feed import ExecutionFeed
from .flows import FlowsService
from .identity import Identity, OpsCaller, Principal
from .operations import OperationsService
from .policy import Action, OpsEndpoint, OpsView, check, ops_view
from .settings import GatewaySettings
from .usage_series import UsageSeries
from .users import UsersService


@dataclass(frozen=True)
class Gateway:
    """Everything a request can reach, built once by ``app.py``'s lifespan."""

    settings: GatewaySettings
    identity: Identity
    users: UsersService
    flows: FlowsService
    agents: AgentsService
    executions: ExecutionsService
    operations: OperationsService
    keys: KeysService
    audit: AuditService
    feed: ExecutionFeed  # GET /executions/stream
    usage_series: UsageSeries  # GET /usage


# auto_error=False: a missing or malformed header is answered in the API's own error shape
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="A user's key (`sk_...`), an admin key, or the master key `API_KEY`.",
)


async def get_gateway(request: Request) -> Gateway:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, on every request
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def get_principal(
    gateway: GatewayDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    token = credentials.credentials.strip() if credentials is not None else None
    return await gateway.identity.authenticate(token or None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def Allowed(action: Action) -> Any:  # noqa: N802 - reads as a type in signatures
    """The caller, once the policy allows ``action`` for its role and scopes (ownership
    is checked by the service that finds the resource); a user's request is counted
    against their rate limit."""

    async def allowed(request: Request, gateway: GatewayDep, principal: PrincipalDep) -> Principal:
        if principal.user is not None:
            request.state.usage_user = principal.user_id  # counted even when refused
        check(principal.caller, action)
        if principal.user is not None:
            request.state.rate = await gateway.identity.rate(principal.user)
        request.state.actor = principal.actor
        return principal

    return Depends(allowed)


# --- operations endpoints (/status, /metrics): a key is optional there --------------------


async def get_ops_caller(
    request: Request,
    gateway: GatewayDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> OpsCaller:
    """No key: anonymous; a bad key: 401; a user's key counts like any user request."""
    token = credentials.credentials.strip() if credentials is not None else None
    caller = await gateway.identity.ops_caller(token or None)
    user = caller.principal.user if caller.principal is not None else None
    if user is not None:  # usage and rate limit, as for get_user
        request.state.usage_user = user["user_id"]
        request.state.rate = await gateway.identity.rate(user)
    return caller


OpsCallerDep = Annotated[OpsCaller, Depends(get_ops_caller)]


@dataclass(frozen=True)
class OpsAccess:
    """What one operations request may see, as ``identity.ops_view`` decided it."""

    endpoint: OpsEndpoint
    view: OpsView
    user_id: str | None  # the caller's, for ``OpsView.OWN``


def _access(caller: OpsCaller, endpoint: OpsEndpoint) -> OpsAccess:
    view = ops_view(caller.kind, endpoint)
    user = caller.principal.user if caller.principal is not None else None
    return OpsAccess(endpoint, view, user["user_id"] if user is not None else None)


async def get_status_access(caller: OpsCallerDep) -> OpsAccess:
    return _access(caller, OpsEndpoint.STATUS)


async def get_metrics_access(request: Request, caller: OpsCallerDep) -> OpsAccess:
    # the published SDK sends Accept: application/json and reads the JSON summary
    wants_json = "application/json" in request.headers.get("accept", "")
    endpoint = OpsEndpoint.METRICS_JSON if wants_json else OpsEndpoint.METRICS_TEXT
    return _access(caller, endpoint)


async def _users(gateway: GatewayDep) -> UsersService:
    return gateway.users


async def _flows(gateway: GatewayDep) -> FlowsService:
    return gateway.flows


async def _agents(gateway: GatewayDep) -> AgentsService:
    return gateway.agents


async def _executions(gateway: GatewayDep) -> ExecutionsService:
    return gateway.executions


async def _operations(gateway: GatewayDep) -> OperationsService:
    return gateway.operations


async def _keys(gateway: GatewayDep) -> KeysService:
    return gateway.keys


RunDep = Annotated[Principal, Allowed(Action.RUN_FLOW)]
ReadExecutionsDep = Annotated[Principal, Allowed(Action.EXECUTION_READ)]
CancelDep = Annotated[Principal, Allowed(Action.EXECUTION_CANCEL)]
InputDep = Annotated[Principal, Allowed(Action.EXECUTION_INPUT)]
ReadFlowsDep = Annotated[Principal, Allowed(Action.FLOW_READ)]
WriteFlowsDep = Annotated[Principal, Allowed(Action.FLOW_WRITE)]
DeleteFlowsDep = Annotated[Principal, Allowed(Action.FLOW_DELETE)]
ReadAgentsDep = Annotated[Principal, Allowed(Action.AGENT_READ)]
WriteAgentsDep = Annotated[Principal, Allowed(Action.AGENT_WRITE)]
DeleteAgentsDep = Annotated[Principal, Allowed(Action.AGENT_DELETE)]
AccountDep = Annotated[Principal, Allowed(Action.ACCOUNT)]
KeysCallerDep = Annotated[Principal, Allowed(Action.KEYS)]
AuditDep = Annotated[Principal, Allowed(Action.AUDIT_READ)]
AdminDep = Annotated[Principal, Allowed(Action.ADMINISTER)]
KeysDep = Annotated[KeysService, Depends(_keys)]


async def _audit(gateway: GatewayDep) -> AuditService:
    return gateway.audit


AuditServiceDep = Annotated[AuditService, Depends(_audit)]
UsersDep = Annotated[UsersService, Depends(_users)]
FlowsDep = Annotated[FlowsService, Depends(_flows)]
AgentsDep = Annotated[AgentsService, Depends(_agents)]
ExecutionsDep = Annotated[ExecutionsService, Depends(_executions)]
OperationsDep = Annotated[OperationsService, Depends(_operations)]
StatusAccessDep = Annotated[OpsAccess, Depends(get_status_access)]
MetricsAccessDep = Annotated[OpsAccess, Depends(get_metrics_access)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Repeat a request safely: the same key (per user) gets the first answer; "
        "the same key with another body is refused (422 IDEMPOTENCY_KEY_REUSED).",
    ),
]
