"""Execution commands, the execution log and snapshots (all keyed by execution_id)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from ..envelope import Body, Message
from ..flow import FlowDefinition

ExecutionStatus = Literal["pending", "running", "waiting_input", "completed", "failed", "cancelled"]
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


class ExecutionStarted(Message):
    type: Literal["execution.started"] = "execution.started"
    data: ExecutionStartedData


class NodeDispatchedData(ExecutionEventBody):
    node_id: str
    attempt: int
    agent_id: str
    task_id: str
    payload: dict[str, Any] = Field(default_factory=dict)


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


class InputReceivedData(ExecutionEventBody):
    node_id: str
    turn: int
    input: dict[str, Any] = Field(default_factory=dict)


class InputReceived(Message):
    type: Literal["execution.input_received"] = "execution.input_received"
    data: InputReceivedData


class ExecutionCompletedData(ExecutionEventBody):
    output_data: dict[str, Any] = Field(default_factory=dict)
    duration_ms: float | None = None


class ExecutionCompleted(Message):
    type: Literal["execution.completed"] = "execution.completed"
    data: ExecutionCompletedData


class ExecutionFailedData(ExecutionEventBody):
    error_message: str
    node_id: str | None = None
    duration_ms: float | None = None


class ExecutionFailed(Message):
    type: Literal["execution.failed"] = "execution.failed"
    data: ExecutionFailedData


class ExecutionCancelledData(ExecutionEventBody):
    reason: str
    duration_ms: float | None = None


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
