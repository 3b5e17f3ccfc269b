"""Message types, topic registry and serialisation shared by every AI Spine service and agent.

Import messages from their area modules (``spine_contracts.messages.executions``) or from
here; topic names only from :mod:`spine_contracts.topics`.
"""

from __future__ import annotations

from . import topics
from .codec import MESSAGE_TYPES, AnyMessage, parse, parse_as, register_upcaster, to_bytes
from .envelope import Body, Message, utcnow
from .errors import (
    ContractError,
    InvalidMessage,
    UndecodableMessage,
    UnknownMessageType,
    UnsupportedVersion,
)
from .flow import FlowDefinition, FlowNode, NodeConfig
from .messages.agents import AgentCancel, AgentMessage, AgentResult
from .messages.auth import (
    AddCredits,
    AuthCommandRejected,
    CreateUser,
    CreditsAdded,
    CreditsRejected,
    CreditsReserved,
    CreditsSettled,
    KeyRotated,
    ReservationWithdrawn,
    ReserveCredits,
    RotateKey,
    SettleCredits,
    UserCreated,
    WithdrawReservation,
)
from .messages.executions import (
    TERMINAL_STATUSES,
    CancelExecution,
    ExecutionCancelled,
    ExecutionCommandRejected,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionSnapshot,
    ExecutionStarted,
    FireTimer,
    InputReceived,
    NodeCompleted,
    NodeDispatched,
    NodeFailed,
    NodeSkipped,
    NodeWaitingInput,
    ProvideInput,
    StartExecution,
)
from .messages.flows import FlowDefined, FlowDeleted
from .messages.ops import (
    DeadLetter,
    GatewayReply,
    MetricsSummaryUpdated,
    ServiceHeartbeat,
    UsageRecorded,
)
from .messages.registry import (
    AgentDeregistered,
    AgentHeartbeat,
    AgentInfo,
    AgentRegistered,
    AgentStatusChanged,
    DeregisterAgent,
    RegisterAgent,
)

__all__ = [name for name in dir() if not name.startswith("_")]
