"""What travels between the orchestrator and the agents."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import AwareDatetime, Field, field_validator

from ..envelope import Body, Message, utcnow
from ..metering import TokenBudget

AgentStatus = Literal["success", "error", "needs_input"]

#: The most UTF-8 bytes of text one progress message carries (a delta, not the whole text).
PROGRESS_TEXT_MAX_BYTES: Final = 8192
#: The longest status line a progress message carries.
PROGRESS_STATUS_MAX_CHARS: Final = 200


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


class AgentProgressData(Body):
    """Partial output of one node at one attempt, live only: the gateway streams it to the
    execution's open streams and nothing stores it (the trail keeps the final output).

    ``seq`` increases per (execution, node, attempt) from 1, so a client can see a gap;
    ``text`` is what came since the previous message (a delta), bounded so a chatty agent
    cannot push large records through a topic every agent may write."""

    execution_id: str
    node_id: str
    attempt: int = Field(ge=1)
    agent_id: str
    seq: int = Field(ge=1)
    text: str | None = None
    tokens: int | None = Field(default=None, ge=0)
    status: str | None = Field(default=None, max_length=PROGRESS_STATUS_MAX_CHARS)

    @field_validator("text")
    @classmethod
    def _bounded_text(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > PROGRESS_TEXT_MAX_BYTES:
            raise ValueError(f"text is at most {PROGRESS_TEXT_MAX_BYTES} UTF-8 bytes")
        return value


class AgentProgress(Message):
    type: Literal["agent.progress"] = "agent.progress"
    data: AgentProgressData
