"""The topic registry: every topic name, key, retention and cleanup policy (the per-topic
table of docs/guarantees.md).

Topic names appear here and nowhere else. Names carry an optional namespace prefix
(``SPINE_TOPIC_PREFIX``) so parallel test runs and installations share one cluster.
Partition counts of ``None`` follow the deployment's default (1–2 in tests, 6+ in
production); the co-partitioned execution topics must always share that count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from .envelope import Message
from .messages import agents, audit, auth, executions, flows, ops, registry

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
FOREVER = -1

CleanupPolicy = Literal["delete", "compact"]

#: no ``.``: a literal ACL on an agent's tasks topic and group names that agent only
_AGENT_ID = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")


@dataclass(frozen=True)
class TopicSpec:
    base: str
    key: str
    retention_ms: int
    cleanup_policy: CleanupPolicy
    messages: tuple[type[Message], ...]
    description: str
    partitions: int | None = None
    co_partitioned: bool = False
    # Not hashed (a dict cannot be), so a frozen spec stays usable as a dict key or set member.
    extra_config: dict[str, str] = field(default_factory=dict, hash=False)

    def name(self, prefix: str = "") -> str:
        return f"{prefix}{self.base}"

    @property
    def retention_label(self) -> str:
        if self.cleanup_policy == "compact":
            return "compacted"
        if self.retention_ms == FOREVER:
            return "forever"
        if self.retention_ms % DAY_MS == 0:
            return f"{self.retention_ms // DAY_MS} d"
        return f"{self.retention_ms // HOUR_MS} h"

    def kafka_config(self) -> dict[str, str]:
        """Topic-level broker config for this spec."""
        config = {"cleanup.policy": self.cleanup_policy, **self.extra_config}
        if self.cleanup_policy == "delete":
            config["retention.ms"] = str(self.retention_ms)
        return config


# fmt: off
# One spec per row of the per-topic table of docs/guarantees.md; kept table-like on purpose.
FLOWS = TopicSpec(
    "spine.flows", "flow_id", FOREVER, "compact",
    (flows.FlowDefined, flows.FlowDeleted),
    "Current flow definitions with their owner, written only by the flow catalogue's writer.",
)
FLOW_COMMANDS = TopicSpec(
    "spine.flows.commands", "flow_id", 7 * DAY_MS, "delete",
    (flows.DefineFlow, flows.DeleteFlow),
    "Flow writes (API and files) to the catalogue's single writer, which checks ownership.",
    partitions=1,
)
AUDIT = TopicSpec(
    "spine.audit", "subject_id", FOREVER, "delete",
    (audit.AuditRecorded,),
    "Flow and agent changes with their actor, written with the change itself.",
)
AUTH_COMMANDS = TopicSpec(
    "spine.auth.commands", "user_id", 7 * DAY_MS, "delete",
    (auth.CreateUser, auth.RotateKey, auth.CreateKey, auth.RevokeKey, auth.AddCredits,
     auth.ReserveCredits, auth.WithdrawReservation, auth.SettleCredits, auth.SetLimits),
    "Commands to the auth service, the single writer per user.",
)
AUTH_EVENTS = TopicSpec(
    "spine.auth.events", "user_id", FOREVER, "delete",
    (auth.UserCreated, auth.KeyRotated, auth.KeyCreated, auth.KeyRevoked,
     auth.CreditsAdded, auth.CreditsReserved,
     auth.CreditsRejected, auth.ReservationWithdrawn, auth.CreditsSettled,
     auth.ExecutionReleased, auth.LimitsSet, auth.AuthCommandRejected),
    "Users, keys (hashes only) and every credit movement.",
)
EXECUTION_COMMANDS = TopicSpec(
    "spine.executions.commands", "execution_id", 7 * DAY_MS, "delete",
    (executions.StartExecution, executions.CancelExecution, executions.ProvideInput,
     executions.FireTimer, executions.ReleaseExecution, executions.ResumeDispatch),
    "Start and release (from auth, after the reservation / when a slot frees), cancel, "
    "provide-input, timer firings and the orchestrator's wake-ups for waiting nodes.",
    co_partitioned=True,
)
EXECUTION_EVENTS = TopicSpec(
    "spine.executions.events", "execution_id", FOREVER, "delete",
    (executions.ExecutionQueued, executions.ExecutionStarted, executions.NodeWaitingAgent,
     executions.NodeDispatched, executions.NodeCompleted,
     executions.NodeFailed, executions.NodeSkipped, executions.NodeWaitingInput,
     executions.InputReceived, executions.ExecutionCompleted, executions.ExecutionFailed,
     executions.ExecutionCancelled, executions.ExecutionCommandRejected),
    "The execution log, from started to completed/failed/cancelled, with every agent output.",
    co_partitioned=True,
)
EXECUTION_SNAPSHOTS = TopicSpec(
    "spine.executions.snapshots", "execution_id", FOREVER, "compact",
    (executions.ExecutionSnapshot,),
    "The orchestrator's latest state per execution, for fast recovery.",
    co_partitioned=True,
)
AGENT_TASKS = TopicSpec(
    "spine.agents.{agent_id}.tasks", "execution_id", 7 * DAY_MS, "delete",
    (agents.AgentMessage, agents.AgentCancel),
    "Tasks for one agent; its replicas share the consumer group named after the agent.",
)
AGENT_RESULTS = TopicSpec(
    "spine.agents.results", "execution_id", 7 * DAY_MS, "delete",
    (agents.AgentResult,),
    "Agent results, co-partitioned with the execution topics.",
    co_partitioned=True,
)
AGENT_PROGRESS = TopicSpec(
    "spine.agents.progress", "execution_id", HOUR_MS, "delete",
    (agents.AgentProgress,),
    "Agents' partial output (text deltas, token counts, a status line), signed, coalesced "
    "to about 10 per second per node; live only: the gateway streams it, nothing stores it.",
)
REGISTRY_COMMANDS = TopicSpec(
    "spine.registry.commands", "agent_id", 7 * DAY_MS, "delete",
    (registry.RegisterAgent,),
    "Agents' own registrations (no owner), signed with the agent's issued key: every agent "
    "writes this topic, so nothing else is accepted on it.",
)
REGISTRY_REQUESTS = TopicSpec(
    "spine.registry.requests", "agent_id", 7 * DAY_MS, "delete",
    (registry.RegisterAgent, registry.DeregisterAgent),
    "Register (naming the owner), update and deregister agents on a user's or the admin's "
    "behalf: only the gateway writes it. Co-partitioned with the registry commands.",
)
REGISTRY_ADMIN = TopicSpec(
    "spine.registry.admin", "agent_id", 7 * DAY_MS, "delete",
    (registry.IssueAgent, registry.RevokeAgentKey),
    "The operator's agent commands (spine-admin): record or revoke an agent's signing key "
    "and owner. Co-partitioned with the registry commands; only the operator writes it.",
)
REGISTRY_EVENTS = TopicSpec(
    "spine.registry.events", "agent_id", FOREVER, "compact",
    (registry.AgentRegistered, registry.AgentStatusChanged, registry.AgentDeregistered),
    "The agent catalogue: the last record per agent is its whole entry.",
)
REGISTRY_HEARTBEATS = TopicSpec(
    "spine.registry.heartbeats", "agent_id", HOUR_MS, "delete",
    (registry.AgentHeartbeat,),
    "Agent liveness beats.",
)
SERVICE_HEARTBEATS = TopicSpec(
    "spine.services.heartbeats", "instance_id", HOUR_MS, "delete",
    (ops.ServiceHeartbeat,),
    "Service instance liveness, shown by /status.",
)
GATEWAY_REPLIES = TopicSpec(
    "spine.gateway.replies", "reply_to", HOUR_MS, "delete",
    (ops.GatewayReply,),
    "Answers a gateway replica waits for, routed by the reply-to header.",
)
USAGE = TopicSpec(
    "spine.usage", "user_id", 30 * DAY_MS, "delete",
    (ops.UsageRecorded,),
    "One record per API request.",
)
METRICS_SUMMARY = TopicSpec(
    "spine.metrics.summary", "metric", FOREVER, "compact",
    (ops.MetricsSummaryUpdated,),
    "What /metrics JSON shows; the latest value per metric.",
    partitions=1,
)
DEADLETTER = TopicSpec(
    "spine.deadletter", "origin_key", 30 * DAY_MS, "delete",
    (ops.DeadLetter,),
    "Messages that could not be handled, with the error and their origin.",
)

ALL: tuple[TopicSpec, ...] = (
    FLOWS, FLOW_COMMANDS, AUDIT, AUTH_COMMANDS, AUTH_EVENTS, EXECUTION_COMMANDS, EXECUTION_EVENTS,
    EXECUTION_SNAPSHOTS, AGENT_TASKS, AGENT_RESULTS, AGENT_PROGRESS, REGISTRY_COMMANDS,
    REGISTRY_REQUESTS, REGISTRY_ADMIN, REGISTRY_EVENTS, REGISTRY_HEARTBEATS, SERVICE_HEARTBEATS,
    GATEWAY_REPLIES, USAGE, METRICS_SUMMARY, DEADLETTER,
)
# fmt: on
#: Topics that exist once per installation (the per-agent task topics are created on demand).
STATIC: tuple[TopicSpec, ...] = tuple(t for t in ALL if t is not AGENT_TASKS)


def agent_tasks(agent_id: str, prefix: str = "") -> str:
    """Name of one agent's tasks topic; the agent id is validated so it is a legal name."""
    if not _AGENT_ID.fullmatch(agent_id):
        raise ValueError(f"agent_id {agent_id!r} must match {_AGENT_ID.pattern}")
    return prefix + AGENT_TASKS.base.format(agent_id=agent_id)


def spec_for(topic: str, prefix: str = "") -> TopicSpec:
    """The spec of a concrete topic name (agent task topics included)."""
    if not topic.startswith(prefix):
        raise KeyError(topic)
    base = topic[len(prefix) :]
    for spec in ALL:
        if spec.base == base:
            return spec
    if base.startswith("spine.agents.") and base.endswith(".tasks"):
        return AGENT_TASKS
    raise KeyError(topic)
