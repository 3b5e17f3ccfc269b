"""Execution commands, the execution log and snapshots (all keyed by execution_id)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from ..envelope import Body, Message
from ..flow import FlowDefinition

ExecutionStatus = Literal[
    "pending", "queued", "running", "waiting_input", "completed", "failed", "cancelled"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
TimerKind = Literal["node_timeout", "retry", "flow_timeout", "input_timeout", "agent_wait"]


# --- commands (spine.executions.commands) -------------------------------------------------


class StartExecutionData(Body):
    execution_id: str
    user_id: str
    flow: FlowDefinition
    flow_version: str
    input_data: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    credits_reserved: int = 0
    #: the flow's price without tokens (a priced flow reserves ``max_credits`` above it);
    #: ``None``: the reservation is the price (no pricing)
    base_credits: int | None = Field(default=None, ge=0)
    #: auth found the user at ``max_in_flight`` (DESIGN §16): record ``execution.queued`` and
    #: dispatch nothing until auth's :class:`ReleaseExecution`
    queued: bool = False


class StartExecution(Message):
    type: Literal["execution.start"] = "execution.start"
    data: StartExecutionData


class CancelExecutionData(Body):
    execution_id: str
    reason: str = "cancelled by user"
    requested_by: str | None = None


class CancelExecution(Message):
    type: Literal["execution.cancel"] = "execution.cancel"
    data: CancelExecutionData


class ProvideInputData(Body):
    execution_id: str
    node_id: str | None = None
    input: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = None


class ProvideInput(Message):
    type: Literal["execution.provide_input"] = "execution.provide_input"
    data: ProvideInputData


class FireTimerData(Body):
    execution_id: str
    timer_id: str
    kind: TimerKind
    node_id: str | None = None
    attempt: int = 0
    due_at: AwareDatetime


class FireTimer(Message):
    type: Literal["execution.fire_timer"] = "execution.fire_timer"
    data: FireTimerData


class ReleaseExecutionData(Body):
    """Auth freed one of the user's ``max_in_flight`` slots for this queued execution."""

    execution_id: str
    user_id: str


class ReleaseExecution(Message):
    type: Literal["execution.release"] = "execution.release"
    data: ReleaseExecutionData


class ResumeDispatchData(Body):
    """The orchestrator saw ``agent_id`` come back (or get room): the partition of
    ``execution_id`` looks at the nodes waiting for it. Keyed by a waiting execution, so it
    lands on the partition that holds the waiters; it changes no execution by itself."""

    execution_id: str
    agent_id: str


class ResumeDispatch(Message):
    type: Literal["execution.resume_dispatch"] = "execution.resume_dispatch"
    data: ResumeDispatchData


# --- events (spine.executions.events) -----------------------------------------------------


class ExecutionEventBody(Body):
    """Every execution event carries its per-execution sequence number (SSE ids)."""

    execution_id: str
    seq: int = Field(ge=0)


class ExecutionStartedData(ExecutionEventBody):
    user_id: str
    flow_id: str
    flow_version: str
    flow: FlowDefinition
    input_data: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    credits_reserved: int = 0
    base_credits: int | None = Field(default=None, ge=0)


class ExecutionStarted(Message):
    type: Literal["execution.started"] = "execution.started"
    data: ExecutionStartedData


class ExecutionQueued(Message):
    """Accepted with credits held, not started: the user is at ``max_in_flight``. Carries
    what ``execution.started`` carries, so the execution is visible everywhere at once."""

    type: Literal["execution.queued"] = "execution.queued"
    data: ExecutionStartedData


class NodeDispatchedData(ExecutionEventBody):
    node_id: str
    attempt: int
    agent_id: str
    task_id: str
    payload: dict[str, Any] = Field(default_factory=dict)
    #: how long the node waited for its agent (inactive, or at capacity) before this dispatch
    waited_ms: float | None = None


class NodeDispatched(Message):
    type: Literal["execution.node_dispatched"] = "execution.node_dispatched"
    data: NodeDispatchedData


class NodeCompletedData(ExecutionEventBody):
    node_id: str
    attempt: int
    agent_id: str | None = None
    output: dict[str, Any] = Field(default_factory=dict)
    duration_ms: float | None = None


class NodeCompleted(Message):
    type: Literal["execution.node_completed"] = "execution.node_completed"
    data: NodeCompletedData


class NodeFailedData(ExecutionEventBody):
    node_id: str
    attempt: int
    agent_id: str | None = None
    error_message: str
    will_retry: bool = False
    retry_at: AwareDatetime | None = None


class NodeFailed(Message):
    type: Literal["execution.node_failed"] = "execution.node_failed"
    data: NodeFailedData


class NodeSkippedData(ExecutionEventBody):
    node_id: str
    reason: str


class NodeSkipped(Message):
    type: Literal["execution.node_skipped"] = "execution.node_skipped"
    data: NodeSkippedData


class NodeWaitingInputData(ExecutionEventBody):
    node_id: str
    attempt: int
    turn: int
    question: str
    missing_fields: tuple[str, ...] = ()
    expires_at: AwareDatetime | None = None


class NodeWaitingInput(Message):
    type: Literal["execution.node_waiting_input"] = "execution.node_waiting_input"
    data: NodeWaitingInputData


AgentWaitReason = Literal["inactive", "capacity"]


class NodeWaitingAgentData(ExecutionEventBody):
    node_id: str
    agent_id: str
    #: ``inactive``: no live instance (waits up to ``wait_for_agent``, then fails);
    #: ``capacity``: the agent has its ``concurrency`` in flight (waits its turn)
    reason: AgentWaitReason
    detail: str
    wait_until: AwareDatetime | None = None


class NodeWaitingAgent(Message):
    type: Literal["execution.node_waiting_agent"] = "execution.node_waiting_agent"
    data: NodeWaitingAgentData


class InputReceivedData(ExecutionEventBody):
    node_id: str
    turn: int
    input: dict[str, Any] = Field(default_factory=dict)


class InputReceived(Message):
    type: Literal["execution.input_received"] = "execution.input_received"
    data: InputReceivedData


class ExecutionUsage(Body):
    """What an execution's models used and what it is charged (DESIGN §14), on its
    terminal event. ``charge`` is what the policy asks (docs/credits.md), ``charged`` that
    capped by the reservation, ``overshoot`` the difference (recorded, never charged)."""

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    token_credits: float = Field(default=0.0, ge=0)
    charge: int = Field(default=0, ge=0)
    charged: int = Field(default=0, ge=0)
    overshoot: int = Field(default=0, ge=0)
    #: agents whose reported usage was not counted (neither system agents nor the owner's)
    untrusted: tuple[str, ...] = ()


class ExecutionCompletedData(ExecutionEventBody):
    output_data: dict[str, Any] = Field(default_factory=dict)
    duration_ms: float | None = None
    usage: ExecutionUsage | None = None


class ExecutionCompleted(Message):
    type: Literal["execution.completed"] = "execution.completed"
    data: ExecutionCompletedData


class ExecutionFailedData(ExecutionEventBody):
    error_message: str
    node_id: str | None = None
    duration_ms: float | None = None
    usage: ExecutionUsage | None = None


class ExecutionFailed(Message):
    type: Literal["execution.failed"] = "execution.failed"
    data: ExecutionFailedData


class ExecutionCancelledData(ExecutionEventBody):
    reason: str
    duration_ms: float | None = None
    usage: ExecutionUsage | None = None


class ExecutionCancelled(Message):
    type: Literal["execution.cancelled"] = "execution.cancelled"
    data: ExecutionCancelledData


class ExecutionRejectedData(ExecutionEventBody):
    """A command that cannot apply (unknown execution, bad node) is recorded, not dropped."""

    command_type: str
    reason: str


class ExecutionCommandRejected(Message):
    type: Literal["execution.command_rejected"] = "execution.command_rejected"
    data: ExecutionRejectedData


# --- snapshots (spine.executions.snapshots, compacted) ------------------------------------


class ExecutionSnapshotData(Body):
    execution_id: str
    seq: int
    status: ExecutionStatus
    state: dict[str, Any]


class ExecutionSnapshot(Message):
    type: Literal["execution.snapshot"] = "execution.snapshot"
    data: ExecutionSnapshotData
