"""Request bodies and response models of the HTTP API.

Response models allow extra fields (``extra="allow"``): they document and validate what a
client can rely on without dropping what the service adds. The OpenAPI document built from
them is what schemathesis checks the running gateway against.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: ids in paths (executions, users, agents): what the services generate and accept
ID_PATTERN = r"^[A-Za-z0-9_.:@\-]{1,128}$"
#: flow ids are free text in flow files; only NUL (which PostgreSQL cannot store) is refused
FLOW_ID_PATTERN = r"^[^\x00]{1,128}$"


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
    def _no_nul(self) -> _Request:
        if has_nul(self.__dict__) or has_nul(self.__pydantic_extra__ or {}):
            raise ValueError("text must not contain NUL characters")
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


class AddCreditsRequest(_Request):
    user_id: str = Field(min_length=1)
    credits: int = Field(gt=0, le=2**53)


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
    configuration: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


# --- responses -----------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


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


class NodeView(_Open):
    node_id: str
    status: str
    agent_id: str | None
    attempt: int
    output: Any = None
    error_message: str | None
    started_at: str | None
    completed_at: str | None


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
    nodes: dict[str, NodeView] | None = None


class ExecutionList(_Open):
    executions: list[ExecutionView]
    total: int
    limit: int
    offset: int


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


class EventList(_Open):
    execution_id: str
    events: list[EventView]


class Results(_Open):
    execution_id: str
    status: str
    output_data: dict[str, Any] | None
    error_message: str | None
    nodes: dict[str, dict[str, Any]]


class MessageView(_Open):
    seq: int
    node_id: str
    agent_id: str | None
    task_id: str
    attempt: int
    payload: dict[str, Any]
    sent_at: str | None


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


class FlowList(_Open):
    flows: list[FlowView]


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
    status: str
    active: bool | None = None
    configuration: dict[str, Any] = Field(default_factory=dict)


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


class UserView(_Open):
    user_id: str
    email: str
    name: str
    organization: str
    credits: int
    balance: int
    rate_limit: int
    created_at: str | None
    updated_at: str | None


class Me(UserView):
    usage: Usage


class UserCreated(UserView):
    api_key: str


class KeyRotated(_Open):
    user_id: str
    api_key: str
    message: str


class CreditsAddedView(UserView):
    credits_added: int


class Status(_Open):
    status: str
    uptime: float
    components: dict[str, dict[str, Any]]
    projections: dict[str, str]
    services: list[dict[str, Any]]
    consumer_groups: dict[str, Any]


class MetricsSummary(_Open):
    timestamp: str
    executions_total: int
    executions_active: int
    flows_total: int
    agents_total: int
    summary: dict[str, Any]
