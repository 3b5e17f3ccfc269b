"""Request bodies and response models of the HTTP API.

Response models allow extra fields (``extra="allow"``): they document and validate what a
client can rely on without dropping what the service adds. Each view is built once, by its
``of`` constructor over the read model's typed rows, and sent as is (``routes.answer``).
The OpenAPI document built from them is what schemathesis checks the running gateway
against. Names end in ``View`` or ``Request`` where a contract message has the plain name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from spine_contracts import FlowDefinition
from spine_contracts.access import Scope

from .adapters.postgres import (
    AgentRow,
    EventRow,
    ExecutionRow,
    FlowRow,
    KeyRow,
    NodeRow,
    UsageRow,
    UserRow,
)
from .agent_beats import Activity
from .details import NodeDetail
from .layout import layered_layout

#: ids in paths (executions, users, agents): what the services generate and accept
ID_PATTERN = r"^[A-Za-z0-9_.:@\-]{1,128}$"
#: flow ids are free text in flow files; only NUL (which PostgreSQL cannot store) is refused
FLOW_ID_PATTERN = r"^[^\x00]{1,128}$"


#: what orjson (the bus's codec) can encode: 64-bit integers, signed or unsigned
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def json_problem(value: Any, path: str = "") -> str | None:
    """Where and why a JSON value cannot travel on the bus, or ``None``: an integer beyond
    64 bits, a float that is not finite (``NaN``, ``1e400``), a string with a lone surrogate
    (``"\\ud800"``: not UTF-8) or a NUL (PostgreSQL stores neither text nor jsonb with it)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if _INT_MIN <= value <= _INT_MAX else f"{path}: integer beyond 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path}: number not finite ({value})"
    if isinstance(value, str):
        return _text_problem(value, path)
    if isinstance(value, dict):
        for k, v in value.items():
            name = str(k).encode("utf-8", "backslashreplace").decode()  # printable in the error
            here = f"{path}.{name}" if path else name
            problem = _text_problem(str(k), f"{here} (key)") or json_problem(v, here)
            if problem:
                return problem
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            problem = json_problem(v, f"{path}[{i}]")
            if problem:
                return problem
    return None


def _text_problem(text: str, path: str) -> str | None:
    if "\x00" in text:
        return f"{path}: text must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"{path}: text is not valid Unicode (a lone surrogate)"
    return None


def has_nul(value: Any) -> bool:
    """Whether a NUL character hides anywhere in a JSON value (keys included): PostgreSQL
    can store it neither in text nor in jsonb, so it is refused at the door."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(v) for v in value)
    return False


# --- requests ------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="after")
    def _travels(self) -> _Request:
        """Bad input is a 422 naming the field, never a 500 from the codec later."""
        problem = json_problem(self.__dict__) or json_problem(self.__pydantic_extra__ or {})
        if problem:
            raise ValueError(problem)
        return self


class ExecuteRequest(_Request):
    flow_id: str = Field(min_length=1, max_length=128)
    input_data: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class CreateUserRequest(_Request):
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    name: str = Field(default="", max_length=200)
    organization: str = Field(default="", max_length=200)
    credits: int = Field(default=0, ge=0, le=2**53)
    rate_limit: int = Field(default=60, ge=1, le=2**31 - 1)
    user_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$"
    )
    max_in_flight: int | None = Field(
        default=None, ge=1, le=1_000_000, description="executions running at once (default 100)"
    )
    max_queued: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="executions accepted and waiting for a slot (default 1000)",
    )


class LimitsRequest(_Request):
    """The admin's change of a user's limits; a field left out keeps its value."""

    max_in_flight: int | None = Field(default=None, ge=1, le=1_000_000)
    max_queued: int | None = Field(default=None, ge=0, le=1_000_000)


class AddCreditsRequest(_Request):
    user_id: str = Field(min_length=1)
    credits: int = Field(gt=0, le=2**53)


class CreateKeyRequest(_Request):
    """A further key: its scopes (default: the calling key's), and an expiry as seconds
    from now or an instant (default: none for a user's key unless the calling key
    expires; one hour for an admin key)."""

    name: str = Field(default="", max_length=100)
    scopes: list[Scope] | None = Field(default=None, max_length=4)
    expires_in_s: int | None = Field(default=None, ge=1, le=10 * 365 * 86400)
    expires_at: AwareDatetime | None = None
    role: Literal["user", "admin"] | None = None


class CancelRequest(_Request):
    reason: str | None = Field(default=None, max_length=500)


class InputRequest(_Request):
    """``{"input": {...}, "node_id": ...}``; the answer's fields may also be sent directly."""

    model_config = ConfigDict(extra="allow")

    input: dict[str, Any] | None = None
    node_id: str | None = Field(default=None, max_length=128)


class RegisterAgentRequest(_Request):
    """The catalogue entry; the original SDK's ``{name, type, configuration}`` also works
    (``agent_id`` is then derived from the name)."""

    agent_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$"
    )
    name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=2000)
    endpoint: str | None = Field(default=None, max_length=2000)
    capabilities: list[str] = Field(default_factory=list)
    agent_type: str | None = Field(default=None, max_length=64)
    type: str | None = Field(default=None, max_length=64)
    transport: str | None = Field(default=None, pattern=r"^(kafka|http)$")
    version: str = Field(default="1.0.0", max_length=64)
    rate_limit: int | None = Field(default=None, ge=0, le=2**31 - 1)
    concurrency: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="tasks the agent takes at once; the orchestrator keeps no more "
        "outstanding and lets tenants take turns (none: no cap)",
    )
    configuration: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


# --- responses -----------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class ErrorBody(_Open):
    """Every error: FastAPI's ``detail`` plus the original SDK's ``message``/``error_code``."""

    detail: str
    code: str
    message: str
    error_code: str


class Health(_Open):
    status: str
    service: str
    version: str
    timestamp: str


class ExecutionAccepted(_Open):
    execution_id: str
    status: str
    created_at: str | None

    @classmethod
    def of(cls, row: ExecutionRow) -> ExecutionAccepted:
        return cls(
            execution_id=row["execution_id"],
            status=row["status"],
            created_at=iso(row["created_at"]),
        )


class PendingInput(_Open):
    """What a node waiting for input asked (its last ``execution.node_waiting_input``)."""

    question: str | None
    missing_fields: list[str]
    turn: int | None
    expires_at: str | None


class NodeView(_Open):
    node_id: str
    status: str
    agent_id: str | None
    #: attempts dispatched to the agent so far (0: the agent never got the node)
    attempt: int
    output: Any = None
    error_message: str | None
    started_at: str | None
    completed_at: str | None
    #: the detail's (``GET /executions/{id}``): what the node was given, how long it took
    #: from its first event to its end, and the question it waits on
    input: Any = None
    duration_ms: float | None = None
    pending_input: PendingInput | None = None

    @classmethod
    def of(cls, n: NodeRow, detail: NodeDetail | None = None) -> NodeView:
        view = cls(
            node_id=n["node_id"],
            status=n["status"],
            agent_id=n["agent_id"],
            attempt=n["attempt"],
            output=n["output"],
            error_message=n["error_message"],
            started_at=iso(n["started_at"]),
            completed_at=iso(n["completed_at"]),
        )
        if detail is not None:
            view.input = detail.input
            view.duration_ms = detail.duration_ms
            if detail.pending_input is not None:
                view.pending_input = PendingInput.model_validate(detail.pending_input)
        return view


class ExecutionView(_Open):
    execution_id: str
    flow_id: str
    flow_version: str
    status: str
    input_data: dict[str, Any]
    output_data: dict[str, Any] | None
    error_message: str | None
    metadata: dict[str, Any]
    created_at: str | None
    updated_at: str | None
    completed_at: str | None
    #: who owns the execution (the admin's list spans every tenant)
    user_id: str | None = None
    nodes: dict[str, NodeView] | None = None
    #: the detail's: the flow the execution ran, as ``GET /flows/{id}/graph`` draws it
    graph: FlowGraph | None = None
    #: the detail's, once ended: tokens used and credits charged (its terminal event's
    #: ``usage``, DESIGN §14); ``None`` for a run that was not metered
    usage: dict[str, Any] | None = None

    @classmethod
    def detail(
        cls,
        row: ExecutionRow,
        nodes: Sequence[tuple[NodeRow, NodeDetail]],
        graph: FlowGraph | None,
    ) -> ExecutionView:
        """``GET /executions/{id}``: every node with its detail, and the flow's graph."""
        view = cls.of(row)
        view.nodes = {n["node_id"]: NodeView.of(n, d) for n, d in nodes}
        view.graph = graph
        return view

    @classmethod
    def of(cls, row: ExecutionRow, nodes: list[NodeRow] | None = None) -> ExecutionView:
        return cls(
            execution_id=row["execution_id"],
            flow_id=row["flow_id"],
            flow_version=row["flow_version"],
            status=row["status"],
            input_data=row["input_data"],
            output_data=row["output_data"],
            error_message=row["error_message"],
            metadata=row["metadata"],
            created_at=iso(row["created_at"]),
            updated_at=iso(row["updated_at"]),
            completed_at=iso(row["completed_at"]),
            user_id=row.get("user_id"),
            nodes=None if nodes is None else {n["node_id"]: NodeView.of(n) for n in nodes},
        )


class ExecutionList(_Open):
    executions: list[ExecutionView]
    #: how many match the filters in all (every page, not only this one)
    total: int
    limit: int
    offset: int
    #: pass as ``?cursor=`` for the next page; ``None``: this was the last
    next_cursor: str | None = None


class ExecutionAction(_Open):
    """The answer to cancel and input, once the read model applied the resulting event."""

    execution_id: str
    status: str
    message: str


class EventView(_Open):
    seq: int
    type: str
    data: dict[str, Any]
    occurred_at: str | None

    @classmethod
    def of(cls, e: EventRow) -> EventView:
        return cls(seq=e["seq"], type=e["type"], data=e["data"], occurred_at=iso(e["occurred_at"]))


class EventList(_Open):
    execution_id: str
    events: list[EventView]


class Results(_Open):
    execution_id: str
    status: str
    output_data: dict[str, Any] | None
    error_message: str | None
    nodes: dict[str, dict[str, Any]]

    @classmethod
    def of(cls, row: ExecutionRow, nodes: list[NodeRow]) -> Results:
        return cls(
            execution_id=row["execution_id"],
            status=row["status"],
            output_data=row["output_data"],
            error_message=row["error_message"],
            nodes={
                n["node_id"]: {
                    "status": n["status"],
                    "agent_id": n["agent_id"],
                    "output": n["output"],
                    "error_message": n["error_message"],
                }
                for n in nodes
            },
        )


class MessageView(_Open):
    seq: int
    node_id: str
    agent_id: str | None
    task_id: str
    attempt: int
    payload: dict[str, Any]
    sent_at: str | None

    @classmethod
    def of(cls, e: EventRow) -> MessageView:
        """A ``node_dispatched`` event as the original's message log showed it."""
        d = e["data"]
        return cls(
            seq=e["seq"],
            node_id=d["node_id"],
            agent_id=d["agent_id"],
            task_id=d["task_id"],
            attempt=d["attempt"],
            payload=d["payload"],
            sent_at=iso(e["occurred_at"]),
        )


class MessageList(_Open):
    execution_id: str
    messages: list[MessageView]


class FlowView(_Open):
    flow_id: str
    name: str
    description: str
    version: str
    flow_version: str
    cost: int
    source: str
    nodes: list[dict[str, Any]]
    definition: dict[str, Any]
    updated_at: str | None
    owner: str = "system"

    @classmethod
    def of(cls, f: FlowRow) -> FlowView:
        d = f["definition"]
        return cls(
            flow_id=f["flow_id"],
            name=d.get("name", ""),
            description=d.get("description", ""),
            version=d.get("version", ""),
            flow_version=f["flow_version"],
            cost=d.get("cost", 1),
            source=f["source"],
            nodes=d.get("nodes", []),
            definition=d,
            updated_at=iso(f["updated_at"]),
            owner=f["owner"],
        )


class FlowList(_Open):
    flows: list[FlowView]


class GraphNode(_Open):
    """A node as drawn: ``x`` its layer (depth), ``y`` its index within the layer."""

    id: str
    agent_id: str | None
    type: str
    label: str
    condition: str | None = None
    x: int
    y: int


class GraphEdge(_Open):
    """``from`` → ``to`` (a dependency); ``condition``: the ``when`` of ``to``, if any."""

    model_config = ConfigDict(extra="allow", serialize_by_alias=True)

    from_: str = Field(alias="from")
    to: str
    condition: str | None = None


class FlowGraph(_Open):
    flow_id: str
    flow_version: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    #: how many layers, and the most nodes in one: the grid the ``x``/``y`` span
    layers: int
    width: int

    @classmethod
    def of(cls, flow_version: str, flow: FlowDefinition) -> FlowGraph:
        edges = [
            GraphEdge.model_validate({"from": dep, "to": n.id, "condition": n.when})
            for n in flow.nodes
            for dep in n.depends_on
        ]
        placed = layered_layout([n.id for n in flow.nodes], [(e.from_, e.to) for e in edges])
        layers = 1 + max((p.layer for p in placed.values()), default=-1)
        width = max(
            (sum(1 for p in placed.values() if p.layer == i) for i in range(layers)), default=0
        )
        return cls(
            flow_id=flow.flow_id,
            flow_version=flow_version,
            nodes=[
                GraphNode(
                    id=n.id,
                    agent_id=n.agent_id,
                    type=n.type,
                    label=_label(n.metadata) or n.id,
                    condition=n.when,
                    x=placed[n.id].layer,
                    y=placed[n.id].index,
                )
                for n in flow.nodes
            ],
            edges=edges,
            layers=layers,
            width=width,
        )


def _label(metadata: dict[str, Any]) -> str | None:
    """A node's label for people: its metadata's ``label`` (or ``name``) when a string."""
    for key in ("label", "name"):
        value = metadata.get(key)
        if isinstance(value, str) and value:
            return value
    return None


class FlowWritten(FlowView):
    created: bool
    replaced_source: str | None


class FlowDeletedView(_Open):
    flow_id: str
    deleted: Literal[True]


class AgentView(_Open):
    agent_id: str
    name: str
    type: str
    #: ``active``; ``waiting``: registered (or re-pointed), no heartbeat (a bus agent) or
    #: health probe (an HTTP agent) has answered yet; ``inactive``: its beats say not
    #: ready or stopped; ``registering``: sent, the registry has not answered (202)
    status: str
    active: bool | None = None
    configuration: dict[str, Any] = Field(default_factory=dict)
    owner: str = "system"
    #: ``kafka`` (its tasks topic) or ``http`` (``endpoint``, called by the relay)
    transport: str = "kafka"
    #: tasks its live instances hold now, from their signed heartbeats (None: not known)
    tasks_in_flight: int | None = None
    #: instances that beat within the stale window and said ready
    instances: int | None = None
    last_heartbeat_at: str | None = None

    @classmethod
    def of(cls, a: AgentRow, activity: Activity | None = None) -> AgentView:
        info = a["info"]
        live: dict[str, Any] = {}
        if activity is not None:
            live = {
                "tasks_in_flight": activity.tasks_in_flight,
                "instances": activity.instances,
                "last_heartbeat_at": iso(activity.last_heartbeat_at),
            }
        return cls.model_validate(
            {
                **info,
                **live,
                # the original SDK's Agent model reads ``type`` and ``configuration``
                "type": info.get("agent_type", "processor"),
                "configuration": info.get("metadata", {}).get("configuration", {}),
                "status": agent_status(a["active"], a["last_seen"]),
                "active": a["active"],
                "last_seen": iso(a["last_seen"]),
                "owner": a["owner"],
            }
        )


def agent_status(active: bool, last_seen: datetime | None) -> str:
    """A registered agent's status: the registry resets ``last_seen`` when it registers an
    agent somewhere new, and sets it with the first beat about it there."""
    if active:
        return "active"
    return "waiting" if last_seen is None else "inactive"


class AgentList(_Open):
    agents: list[AgentView]


class AgentRemoved(_Open):
    agent_id: str
    status: str


class Usage(_Open):
    requests_total: int
    requests_last_24h: int
    errors_last_24h: int
    credits_used_total: int
    credits_used_last_24h: int
    last_request_at: str | None

    @classmethod
    def of(cls, u: UsageRow) -> Usage:
        return cls(
            requests_total=int(u["requests"] or 0),
            requests_last_24h=int(u["requests_24h"]),
            errors_last_24h=int(u["errors_24h"]),
            credits_used_total=int(u["credits"] or 0),
            credits_used_last_24h=int(u["credits_24h"]),
            last_request_at=iso(u["last_request_at"]),
        )


class UsageCounts(_Open):
    """Executions started and ended, credits charged and the model tokens they paid for
    (``tokens``: input and output together)."""

    started: int
    completed: int
    failed: int
    cancelled: int
    credits: int
    input_tokens: int = 0
    output_tokens: int = 0
    tokens: int = 0


class UsageBucket(UsageCounts):
    start: str  # the bucket's first instant (UTC); it lasts one hour or one day


class UsageSeriesView(_Open):
    """``GET /usage``: one bucket per hour or day from ``from`` to ``to`` (empty ones too)."""

    model_config = ConfigDict(extra="allow", serialize_by_alias=True, validate_by_name=True)

    user_id: str | None  # None: every user's together (the admin's view)
    bucket: str
    from_: str = Field(alias="from")
    to: str
    buckets: list[UsageBucket]
    totals: UsageCounts


class TokenTotals(_Open):
    """Model tokens of a user's settled executions (docs/credits.md, Priced flows)."""

    input: int = 0
    output: int = 0


class UserView(_Open):
    user_id: str
    email: str
    name: str
    organization: str
    credits: int
    balance: int
    rate_limit: int
    #: the user's own limits (DESIGN §16); ``None``: the service's default
    max_in_flight: int | None = None
    max_queued: int | None = None
    tokens: TokenTotals = Field(default_factory=TokenTotals)
    created_at: str | None
    updated_at: str | None

    @classmethod
    def fields_of(cls, u: UserRow) -> dict[str, Any]:
        """The fields every user view shares (``credits`` is the original's name of the
        balance)."""
        return {
            "user_id": u["user_id"],
            "email": u["email"],
            "name": u["name"],
            "organization": u["organization"],
            "credits": u["balance"],
            "balance": u["balance"],
            "rate_limit": u["rate_limit"],
            "max_in_flight": u.get("max_in_flight"),
            "max_queued": u.get("max_queued"),
            "tokens": TokenTotals(
                input=int(u.get("input_tokens") or 0), output=int(u.get("output_tokens") or 0)
            ),
            "created_at": iso(u["created_at"]),
            "updated_at": iso(u["updated_at"]),
        }

    @classmethod
    def of(cls, u: UserRow) -> UserView:
        return cls(**cls.fields_of(u))


class UserList(_Open):
    """The admin's list of users, newest first (no key material: only hashes are stored)."""

    users: list[UserView]
    total: int
    limit: int
    next_cursor: str | None = None


class Me(UserView):
    usage: Usage


class NewUserView(UserView):
    """The created user with its key, shown once."""

    api_key: str


class NewKeyView(_Open):
    user_id: str
    api_key: str
    message: str
    key_id: str | None = None


class KeyView(_Open):
    """A key as listed: never its secret, only the last four characters."""

    key_id: str
    name: str
    scopes: list[str]
    role: str
    last4: str
    created_at: str | None
    expires_at: str | None
    last_used_at: str | None = None
    current: bool = False  # the key this request was made with

    @classmethod
    def of(cls, k: KeyRow, *, last_used: float | None, current: bool) -> KeyView:
        return cls(
            key_id=k["key_id"],
            name=k["name"],
            scopes=list(k["scopes"]),
            role=k["role"],
            last4=k["last4"],
            created_at=iso(k["created_at"]),
            expires_at=iso(k["expires_at"]),
            last_used_at=iso(datetime.fromtimestamp(last_used, UTC)) if last_used else None,
            current=current,
        )


class KeyList(_Open):
    keys: list[KeyView]


class NewScopedKey(_Open):
    """A created key: the secret ``api_key`` is in this answer only."""

    key_id: str
    api_key: str
    name: str
    scopes: list[str]
    role: str
    last4: str
    expires_at: str | None


class KeyRevokedView(_Open):
    key_id: str
    revoked: Literal[True]


class AuditEntry(_Open):
    at: str | None
    actor: str | None  # a key id, "master", or the service that decided alone
    tenant: str  # the account it concerns ("system" for the shared catalogue)
    action: str
    subject: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, row: dict[str, Any]) -> AuditEntry:
        detail = row["detail"]
        return cls(
            at=iso(row["at"]),
            actor=row["actor"],
            tenant=row["tenant"],
            action=row["action"],
            subject=row["subject"],
            detail=orjson.loads(detail) if isinstance(detail, str) else detail,
        )


class AuditPage(_Open):
    entries: list[AuditEntry]
    next_cursor: str | None


class CreditsAddedView(UserView):
    credits_added: int


class Liveness(_Open):
    """``/status`` without a key (or with a user's key or the scrape token): whether the
    installation is up, and nothing about who or what runs in it."""

    status: str
    version: str
    uptime: float


class Status(Liveness):
    """``/status`` with the master key: every component and projection, what the deployment
    expects and what of it is missing, every live service instance, the expected system
    agents, every consumer group."""

    components: dict[str, dict[str, Any]]
    projections: dict[str, str]
    expected: list[str]
    missing: list[str]
    services: list[dict[str, Any]]
    agents: list[dict[str, Any]]
    consumer_groups: dict[str, Any]


class MetricsSummaryView(_Open):
    """``/metrics`` JSON: every tenant's figures (``scope: all``, the master key) or the
    caller's own (``scope: user``, a user's key), in the same fields."""

    timestamp: str
    scope: Literal["all", "user"]
    executions_total: int
    executions_active: int
    flows_total: int
    agents_total: int
    summary: dict[str, Any]
