"""What travels between the orchestrator and the agents."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from ..envelope import Body, Message, utcnow
from ..metering import TokenBudget

AgentStatus = Literal["success", "error", "needs_input"]


class AgentMessageData(Body):
    """One task for one agent; ``(execution_id, node_id, attempt)`` is its idempotency key."""

    execution_id: str
    node_id: str
    attempt: int = Field(ge=1)
    from_agent: str | None = None
    to_agent: str
    payload: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    timestamp: AwareDatetime = Field(default_factory=utcnow)
    deadline: AwareDatetime | None = None
    #: a priced flow's credits left for tokens (DESIGN §14); a model agent bounds
    #: ``max_tokens`` by it
    budget: TokenBudget | None = None

    @property
    def idempotency_key(self) -> str:
        return f"{self.execution_id}:{self.node_id}:{self.attempt}"


class AgentMessage(Message):
    type: Literal["agent.message"] = "agent.message"
    data: AgentMessageData


class AgentCancelData(Body):
    """Tells an agent that work for this execution is no longer wanted."""

    execution_id: str
    node_id: str | None = None
    reason: str = "execution cancelled"


class AgentCancel(Message):
    type: Literal["agent.cancel"] = "agent.cancel"
    data: AgentCancelData


class AgentResultData(Body):
    execution_id: str
    node_id: str
    attempt: int = Field(ge=1)
    agent_id: str
    status: AgentStatus
    output: dict[str, Any] = Field(default_factory=dict)
    error_message: str | None = None
    question: str | None = None
    missing_fields: tuple[str, ...] = ()
    metrics: dict[str, float] = Field(default_factory=dict)


class AgentResult(Message):
    type: Literal["agent.result"] = "agent.result"
    data: AgentResultData
