"""The execution state machine: pure, deterministic, no I/O.

``decide(state, message, env)`` takes the current state of one execution (or ``None``),
one input (a command, an agent result or a timer firing) and the environment (clock,
agent catalogue, condition evaluator) and returns a :class:`Decision`: the new state and
the effects to publish (execution events, agent tasks and cancels, the settle-credits
command). The Kafka adapter publishes a decision's effects, the snapshot of the new state
and the input's offset in one transaction, so a decision happens exactly once.

Rules (docs/guarantees.md, docs/flows.md):
* every node whose dependencies are all done is dispatched at once;
* a node whose ``when`` is false is skipped, and so is a node whose dependencies were all
  skipped; a node with some completed dependencies runs with those outputs;
* an ``output`` node needs no agent: its output is its single dependency's output, or a
  map of dependency id to output when it has several;
* a node is dispatched only to an agent of ``system`` or of the execution's user
  (DESIGN §12): an agent of another user fails the execution, naming the agent, and
  nothing reaches that agent's topic;
* ``(execution, node, attempt)`` is dispatched at most once; a result for any other
  attempt, or for a finished node, changes nothing;
* a failure is retried (a new attempt after a backoff timer) up to ``retries`` times, then
  the execution fails naming the node and the cause;
* ``needs_input`` parks the node in ``waiting_input`` until input arrives, up to
  ``max_turns`` questions or ``input_timeout``;
* a node whose agent is not active (no live instance, or not yet known) waits for it in
  ``waiting_agent`` up to ``wait_for_agent`` (default 60 s; one deadline timer, no polling)
  and fails when it is still not back; a node the partition's capacity ledger does not
  admit (the agent has its share in flight, or others wait before it) waits its turn
  without a deadline. Either wait is an ``execution.node_waiting_agent`` event; the
  partition (:mod:`.dispatch`) resumes the node with :func:`resume_node`;
* an execution started ``queued`` (its user at ``max_in_flight``) records
  ``execution.queued`` and dispatches nothing until ``ReleaseExecution``;
* a terminal execution ignores everything but is remembered, so duplicates stay harmless;
* credits per token (DESIGN §14, docs/credits.md): every accepted result's ``usage`` (success,
  error or question alike: the provider was paid) is counted when its agent is ``system``
  or the execution user's own, and listed as untrusted otherwise; a priced flow's tasks
  carry the budget left; the charge is the base price (completed, or cancelled after work)
  plus the tokens, capped by the reservation, the rest recorded as overshoot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from spine_contracts import (
    AgentCancel,
    AgentMessage,
    AgentResult,
    CancelExecution,
    ExecutionCancelled,
    ExecutionCommandRejected,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    FireTimer,
    FlowDefinition,
    FlowNode,
    InputReceived,
    Message,
    NodeCompleted,
    NodeDispatched,
    NodeFailed,
    NodeSkipped,
    NodeWaitingAgent,
    NodeWaitingInput,
    ProvideInput,
    ReleaseExecution,
    SettleCredits,
    StartExecution,
)
from spine_contracts.access import SYSTEM, owner_may_use
from spine_contracts.messages.executions import AgentWaitReason, ExecutionQueued, ExecutionUsage
from spine_contracts.metering import TokenBudget, credits_for, usage_in, whole_credits

NodeStatus = Literal[
    "pending",
    "dispatched",
    "waiting_input",
    "waiting_agent",
    "completed",
    "failed",
    "skipped",
    "cancelled",
]
AgentAvailability = Literal["active", "inactive", "unknown", "deregistered"]
Outcome = Literal["completed", "failed", "cancelled"]
TERMINAL_NODE: frozenset[str] = frozenset({"completed", "failed", "skipped", "cancelled"})
MAX_BACKOFF_S = 60.0
DEFAULT_AGENT_WAIT_S = 60.0


def _system_owned(_agent_id: str) -> str | None:
    return SYSTEM


def _admit_all(_agent_id: str, _user_id: str, _execution_id: str, _node_id: str) -> bool:
    return True


@dataclass(frozen=True)
class Environment:
    """What a decision may look at besides the state: time, agents, conditions."""

    now: datetime
    agent_availability: Callable[[str], AgentAvailability]
    evaluate_condition: Callable[[str, Mapping[str, Any], Mapping[str, Any]], bool]
    default_node_timeout_s: float = 300.0
    default_input_timeout_s: float = 3600.0
    #: the agent's owner (``system`` or a user id); ``None`` for an agent not known
    agent_owner: Callable[[str], str | None] = _system_owned
    #: the partition's capacity ledger: may ``(agent, user, execution, node)`` be dispatched
    #: now (a slot of the agent's share is free and nobody waits before it)? Taking the
    #: slot is part of saying yes.
    admit: Callable[[str, str, str, str], bool] = _admit_all
    default_agent_wait_s: float = DEFAULT_AGENT_WAIT_S


@dataclass
class Timer:
    timer_id: str
    kind: str
    due_at: datetime
    node_id: str | None = None
    attempt: int = 0


@dataclass
class NodeState:
    status: NodeStatus = "pending"
    attempt: int = 0  # dispatches so far; the current task is this attempt
    failures: int = 0
    turns: int = 0  # questions asked to the human
    output: dict[str, Any] | None = None
    error: str | None = None
    dispatched_at: datetime | None = None
    wait_started_at: datetime | None = None
    wait_reason: str | None = None  # AgentWaitReason while waiting_agent
    conversation: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ExecutionState:
    execution_id: str
    user_id: str
    flow: FlowDefinition
    flow_version: str
    input_data: dict[str, Any]
    metadata: dict[str, Any]
    credits_reserved: int
    correlation_id: str | None
    trace: str | None
    started_at: datetime
    status: str = "running"
    seq: int = 0
    nodes: dict[str, NodeState] = field(default_factory=dict)
    timers: dict[str, Timer] = field(default_factory=dict)
    error_message: str | None = None
    #: the flow's price without tokens; ``None``: the reservation is the price (no pricing)
    base_credits: int | None = None
    #: tokens counted so far (trusted agents only) and what they cost, unrounded
    input_tokens: int = 0
    output_tokens: int = 0
    token_credits: float = 0.0
    #: agents whose reported usage was not counted, in order of first report
    untrusted: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    @property
    def base_price(self) -> int:
        return self.credits_reserved if self.base_credits is None else self.base_credits

    @property
    def metered(self) -> bool:
        """Whether the terminal event carries a usage: a priced flow, or tokens reported."""
        return bool(self.flow.pricing or self.input_tokens or self.output_tokens or self.untrusted)

    def budget(self) -> TokenBudget | None:
        """What a task of a priced flow may still spend on tokens (``None``: not priced)."""
        if not self.flow.pricing:
            return None
        left = self.credits_reserved - self.base_price - self.token_credits
        return TokenBudget(credits=max(0.0, left), pricing=self.flow.pricing)

    def node(self, node_id: str) -> FlowNode:
        for node in self.flow.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    # --- snapshots -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The snapshot body, built field by field: ``dataclasses.asdict`` would deep-copy the
        flow model and every output of every snapshot.
        Outputs, inputs and metadata are JSON already (they came off the bus), so they are
        shared, not copied; the encoder reads them once."""
        return {
            "execution_id": self.execution_id,
            "user_id": self.user_id,
            "flow": _flow_json(self.flow, self.flow_version),
            "flow_version": self.flow_version,
            "input_data": self.input_data,
            "metadata": self.metadata,
            "credits_reserved": self.credits_reserved,
            "correlation_id": self.correlation_id,
            "trace": self.trace,
            "started_at": self.started_at.isoformat(),
            "status": self.status,
            "seq": self.seq,
            "nodes": {k: _node_json(n) for k, n in self.nodes.items()},
            "timers": {k: _timer_json(t) for k, t in self.timers.items()},
            "error_message": self.error_message,
            "base_credits": self.base_credits,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "token_credits": self.token_credits,
            "untrusted": list(self.untrusted),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExecutionState:
        nodes = {
            k: NodeState(
                **{
                    **v,
                    "dispatched_at": _dt(v.get("dispatched_at")),
                    "wait_started_at": _dt(v.get("wait_started_at")),
                }
            )
            for k, v in data["nodes"].items()
        }
        timers = {k: Timer(**{**v, "due_at": _dt(v["due_at"])}) for k, v in data["timers"].items()}
        return cls(
            **{
                **data,
                "flow": FlowDefinition.model_validate(data["flow"]),
                "started_at": _dt(data["started_at"]),
                "nodes": nodes,
                "timers": timers,
                # a snapshot of older code has none of the metering fields: the defaults
                "untrusted": tuple(data.get("untrusted", ())),
            }
        )


@dataclass(frozen=True)
class FinishedExecution:
    """What is kept of a terminal execution: enough to ignore a duplicate start and to
    reject a late cancel or input with the next ``seq``. The flow, the outputs and the
    conversation are dropped, so memory and the state rebuilt on a partition's assignment
    grow with live executions, not with history."""

    execution_id: str
    user_id: str
    status: str
    seq: int
    correlation_id: str | None
    trace: str | None
    timers: Mapping[str, Timer] = field(default_factory=dict)

    terminal = True

    @classmethod
    def of(cls, state: ExecutionState) -> FinishedExecution:
        return cls(
            state.execution_id,
            state.user_id,
            state.status,
            state.seq,
            state.correlation_id,
            state.trace,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "finished": True,
            "execution_id": self.execution_id,
            "user_id": self.user_id,
            "status": self.status,
            "seq": self.seq,
            "correlation_id": self.correlation_id,
            "trace": self.trace,
        }


AnyState = ExecutionState | FinishedExecution


def state_from_dict(data: Mapping[str, Any]) -> AnyState:
    """A snapshot body back into a state (a finished one is the small form)."""
    if data.get("finished"):
        return FinishedExecution(
            data["execution_id"],
            data["user_id"],
            data["status"],
            data["seq"],
            data.get("correlation_id"),
            data.get("trace"),
        )
    return ExecutionState.from_dict(data)


@dataclass(frozen=True)
class Task:
    """An agent task to publish on the agent's tasks topic."""

    agent_id: str
    message: AgentMessage | AgentCancel


@dataclass
class Decision:
    state: AnyState | None
    events: list[Message] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    commands: list[Message] = field(default_factory=list)  # settle-credits

    @property
    def changed(self) -> bool:
        return bool(self.events or self.tasks or self.commands)


def decide(state: AnyState | None, message: Message, env: Environment) -> Decision:
    """Apply one input to one execution."""
    if isinstance(state, FinishedExecution):
        return _decide_finished(state, message)
    if isinstance(message, StartExecution):
        if state is not None:
            return Decision(state)  # duplicate start: the execution already exists
        run = _Run(_new_state(message, env), message, env)
        return run.queue() if message.data.queued else run.start()
    if state is None:
        if isinstance(message, (CancelExecution, ProvideInput)):
            return _reject_unknown(message)
        return Decision(None)  # late result or timer for an execution we never had
    if state.terminal:
        if isinstance(message, (CancelExecution, ProvideInput)):
            run = _Run(state, message, env)
            run.emit(
                ExecutionCommandRejected,
                command_type=message.type,
                reason=f"execution is already {state.status}",
            )
            return run.decision
        return Decision(state)
    run = _Run(state, message, env)
    if isinstance(message, AgentResult):
        run.on_result(message)
    elif isinstance(message, CancelExecution):
        run.cancel(message.data.reason)
    elif isinstance(message, ProvideInput):
        run.on_input(message)
    elif isinstance(message, FireTimer):
        run.on_timer(message)
    elif isinstance(message, ReleaseExecution):
        if state.status == "queued":
            run.start()
    return run.decision


def resume_node(state: AnyState, node_id: str, cause: Message, env: Environment) -> Decision:
    """Dispatch a node waiting for its agent, now that the partition's ledger gave it a
    slot (the agent is active, its turn came). Anything else changes nothing."""
    if not isinstance(state, ExecutionState) or state.terminal:
        return Decision(state)
    ns = state.nodes.get(node_id)
    if ns is None or ns.status != "waiting_agent":
        return Decision(state)
    run = _Run(state, cause, env)
    run._dispatch(state.node(node_id), admitted=True)
    return run.decision


def _decide_finished(state: FinishedExecution, message: Message) -> Decision:
    if not isinstance(message, (CancelExecution, ProvideInput)):
        return Decision(state)  # a duplicate start, a late result or timer: nothing to do
    seq = state.seq + 1
    event = ExecutionCommandRejected.build(
        cause=message,
        correlation_id=state.correlation_id,
        tenant_id=state.user_id,
        trace=state.trace,
        execution_id=state.execution_id,
        seq=seq,
        command_type=message.type,
        reason=f"execution is already {state.status}",
    )
    return Decision(replace(state, seq=seq), events=[event])


def _reject_unknown(message: CancelExecution | ProvideInput) -> Decision:
    event = ExecutionCommandRejected.build(
        cause=message,
        execution_id=message.data.execution_id,
        seq=0,
        command_type=message.type,
        reason="unknown execution",
    )
    return Decision(None, events=[event])


def _new_state(cmd: StartExecution, env: Environment) -> ExecutionState:
    d = cmd.data
    return ExecutionState(
        execution_id=d.execution_id,
        user_id=d.user_id,
        flow=d.flow,
        flow_version=d.flow_version,
        input_data=dict(d.input_data),
        metadata=dict(d.metadata),
        credits_reserved=d.credits_reserved,
        base_credits=d.base_credits,
        correlation_id=cmd.correlation_id or str(cmd.message_id),
        trace=cmd.trace,
        started_at=env.now,
        nodes={n.id: NodeState() for n in d.flow.nodes},
    )


class _Run:
    """One decision in progress: mutates a copy of the state and collects effects."""

    def __init__(self, state: ExecutionState, cause: Message, env: Environment) -> None:
        self.s = _copy(state)
        self.cause = cause
        self.env = env
        self.decision = Decision(self.s)

    # --- emitting ----------------------------------------------------------------------
    def emit(self, cls: type[Message], **fields: Any) -> None:
        self.s.seq += 1
        self.decision.events.append(
            cls.build(
                cause=self.cause,
                correlation_id=self.s.correlation_id,
                tenant_id=self.s.user_id,
                trace=self.s.trace,
                execution_id=self.s.execution_id,
                seq=self.s.seq,
                **fields,
            )
        )

    def _arm(self, kind: str, seconds: float, node_id: str | None = None, attempt: int = 0) -> None:
        timer_id = f"{kind}:{node_id or '*'}:{attempt}"
        self.s.timers[timer_id] = Timer(
            timer_id, kind, self.env.now + timedelta(seconds=seconds), node_id, attempt
        )

    def _disarm_node(self, node_id: str) -> None:
        for timer_id in [t for t, v in self.s.timers.items() if v.node_id == node_id]:
            del self.s.timers[timer_id]

    # --- lifecycle ---------------------------------------------------------------------
    def queue(self) -> Decision:
        """Accepted, credits held, nothing dispatched: the user is at ``max_in_flight``."""
        s = self.s
        s.status = "queued"
        self.emit(ExecutionQueued, **self._started_fields())
        return self.decision

    def _started_fields(self) -> dict[str, Any]:
        s = self.s
        return {
            "user_id": s.user_id,
            "flow_id": s.flow.flow_id,
            "flow_version": s.flow_version,
            "flow": s.flow,
            "input_data": s.input_data,
            "metadata": s.metadata,
            "credits_reserved": s.credits_reserved,
            "base_credits": s.base_credits,
        }

    def start(self) -> Decision:
        s = self.s
        s.status = "running"
        self.emit(ExecutionStarted, **self._started_fields())
        if s.flow.timeout:
            self._arm("flow_timeout", s.flow.timeout)
        self.advance()
        return self.decision

    def advance(self) -> None:
        """Dispatch, skip or complete every node that became ready; finish when all done."""
        progressed = True
        while progressed and not self.s.terminal:
            progressed = False
            for node in self.s.flow.nodes:
                ns = self.s.nodes[node.id]
                if ns.status != "pending" or not self._deps_done(node):
                    continue
                progressed = True
                self._start_node(node)
                if self.s.terminal:
                    return
        if not self.s.terminal and all(n.status in TERMINAL_NODE for n in self.s.nodes.values()):
            self._complete()

    def _deps_done(self, node: FlowNode) -> bool:
        return all(self.s.nodes[d].status in ("completed", "skipped") for d in node.depends_on)

    def _dep_outputs(self, node: FlowNode) -> dict[str, Any]:
        return {
            d: self.s.nodes[d].output or {}
            for d in node.depends_on
            if self.s.nodes[d].status == "completed"
        }

    def _start_node(self, node: FlowNode) -> None:
        ns = self.s.nodes[node.id]
        deps = self._dep_outputs(node)
        if node.depends_on and not deps:
            ns.status = "skipped"
            self.emit(NodeSkipped, node_id=node.id, reason="every dependency was skipped")
            return
        if node.when:
            nodes_view = {
                k: v.output or {} for k, v in self.s.nodes.items() if v.output is not None
            }
            try:
                ok = self.env.evaluate_condition(node.when, self.s.input_data, nodes_view)
            except Exception as exc:  # a broken condition fails the run, naming the node
                self._fail(node.id, f"node '{node.id}': condition {node.when!r} failed: {exc}")
                return
            if not ok:
                ns.status = "skipped"
                self.emit(NodeSkipped, node_id=node.id, reason=f"condition false: {node.when}")
                return
        if node.type == "output" or node.agent_id is None:
            output = next(iter(deps.values())) if len(deps) == 1 else deps
            ns.status = "completed"
            ns.output = dict(output)
            self.emit(NodeCompleted, node_id=node.id, attempt=0, output=ns.output, duration_ms=0.0)
            return
        self._dispatch(node)

    def _agent_wait_s(self, node: FlowNode) -> float:
        if node.config.wait_for_agent is not None:
            return node.config.wait_for_agent
        if self.s.flow.wait_for_agent is not None:
            return self.s.flow.wait_for_agent
        return self.env.default_agent_wait_s

    def _dispatch(self, node: FlowNode, *, admitted: bool = False) -> None:
        assert node.agent_id is not None
        ns = self.s.nodes[node.id]
        owner = self.env.agent_owner(node.agent_id)
        if owner is not None and not owner_may_use(owner, self.s.user_id):
            # checked before availability: waiting cannot make the agent usable
            self._fail(
                node.id, f"node '{node.id}': agent '{node.agent_id}' belongs to another user"
            )
            return
        availability = self.env.agent_availability(node.agent_id)
        if availability == "deregistered":  # removed on purpose: waiting cannot bring it back
            self._fail(node.id, f"node '{node.id}': agent '{node.agent_id}' is deregistered")
            return
        if availability != "active":
            wait = self._agent_wait_s(node)
            if not wait:
                self._fail(node.id, f"node '{node.id}': agent '{node.agent_id}' is {availability}")
                return
            self._wait_for_agent(
                node, "inactive", f"agent '{node.agent_id}' is {availability}", wait
            )
            return
        if not admitted and not self.env.admit(
            node.agent_id, self.s.user_id, self.s.execution_id, node.id
        ):
            self._wait_for_agent(
                node, "capacity", f"agent '{node.agent_id}' has its concurrency in flight"
            )
            return
        waited = None
        if ns.status == "waiting_agent" and ns.wait_started_at is not None:
            waited = _ms(self.env.now - ns.wait_started_at)
        self.s.timers.pop(f"agent_wait:{node.id}:0", None)
        ns.attempt += 1
        ns.status = "dispatched"
        ns.dispatched_at = self.env.now
        ns.wait_started_at = None
        ns.wait_reason = None
        payload = {
            "input": self.s.input_data,
            "dependencies": self._dep_outputs(node),
            "conversation": list(ns.conversation),
            "node_type": node.type,
        }
        config = node.config.model_dump(mode="json", exclude_none=True)
        timeout = node.config.timeout or self.env.default_node_timeout_s
        deadline = self.env.now + timedelta(seconds=timeout)
        task = AgentMessage.build(
            cause=self.cause,
            correlation_id=self.s.correlation_id,
            tenant_id=self.s.user_id,
            trace=self.s.trace,
            execution_id=self.s.execution_id,
            node_id=node.id,
            attempt=ns.attempt,
            from_agent=_previous_agent(self.s, node),
            to_agent=node.agent_id,
            payload=payload,
            config=config,
            metadata={"flow_id": self.s.flow.flow_id},
            timestamp=self.env.now,
            deadline=deadline,
            budget=self.s.budget(),
        )
        self.decision.tasks.append(Task(node.agent_id, task))
        self.emit(
            NodeDispatched,
            node_id=node.id,
            attempt=ns.attempt,
            agent_id=node.agent_id,
            task_id=str(task.message_id),
            payload=payload,
            waited_ms=waited,
        )
        self._arm("node_timeout", timeout, node.id, ns.attempt)

    def _wait_for_agent(
        self, node: FlowNode, reason: AgentWaitReason, detail: str, deadline_s: float = 0
    ) -> None:
        """Park the node until the partition resumes it. An inactive agent gets one deadline
        timer (``wait_for_agent``); waiting for capacity has none (the flow's timeout bounds
        it). The trail says so once per reason."""
        assert node.agent_id is not None
        ns = self.s.nodes[node.id]
        if ns.status != "waiting_agent":
            ns.status = "waiting_agent"
            ns.wait_started_at = self.env.now
        elif ns.wait_reason == reason:
            return
        ns.wait_reason = reason
        wait_until = None
        if reason == "inactive":
            timer_id = f"agent_wait:{node.id}:0"
            if timer_id not in self.s.timers:
                self._arm("agent_wait", deadline_s, node.id)
            wait_until = self.s.timers[timer_id].due_at
        self.emit(
            NodeWaitingAgent,
            node_id=node.id,
            agent_id=node.agent_id,
            reason=reason,
            detail=detail,
            wait_until=wait_until,
        )

    # --- inputs ------------------------------------------------------------------------
    def on_result(self, result: AgentResult) -> None:
        r = result.data
        ns = self.s.nodes.get(r.node_id)
        if ns is None or ns.status != "dispatched" or ns.attempt != r.attempt:
            return  # duplicate, late or foreign: changes nothing
        node = self.s.node(r.node_id)
        self._disarm_node(node.id)
        self._count_usage(node, result)
        duration = _ms(self.env.now - ns.dispatched_at) if ns.dispatched_at else None
        if r.status == "success":
            ns.status = "completed"
            ns.output = dict(r.output)
            self.emit(
                NodeCompleted,
                node_id=node.id,
                attempt=r.attempt,
                agent_id=r.agent_id,
                output=ns.output,
                duration_ms=duration,
            )
            self.advance()
        elif r.status == "needs_input":
            self._ask(node, ns, r.question or "more input is needed", r.missing_fields)
        else:
            self._attempt_failed(node, r.error_message or "agent reported an error")

    def _count_usage(self, node: FlowNode, result: AgentResult) -> None:
        """Add the tokens a result reports, if its agent may be believed: one of
        ``system`` or of the execution's user (another's agent could inflate the bill).
        The agent asked is the one whose signature the result carries."""
        usage = usage_in(result.data.output)
        if usage is None:
            return
        agent_id = node.agent_id or result.data.agent_id
        owner = self.env.agent_owner(agent_id)
        if owner is None or not owner_may_use(owner, self.s.user_id):
            if agent_id not in self.s.untrusted:
                self.s.untrusted = (*self.s.untrusted, agent_id)
            return
        self.s.input_tokens += usage.input_tokens
        self.s.output_tokens += usage.output_tokens
        self.s.token_credits += credits_for(self.s.flow.pricing, usage)

    def _ask(self, node: FlowNode, ns: NodeState, question: str, missing: tuple[str, ...]) -> None:
        max_turns = node.config.max_turns or 1
        if ns.turns >= max_turns:
            self._fail(
                node.id,
                f"node '{node.id}': still needs input after {ns.turns} turn(s) "
                f"(max_turns {max_turns}): {question}",
            )
            return
        ns.turns += 1
        ns.status = "waiting_input"
        ns.conversation.append({"role": "agent", "content": question})
        timeout = node.config.input_timeout or self.env.default_input_timeout_s
        expires = self.env.now + timedelta(seconds=timeout)
        self._arm("input_timeout", timeout, node.id, ns.attempt)
        self.s.status = "waiting_input"
        self.emit(
            NodeWaitingInput,
            node_id=node.id,
            attempt=ns.attempt,
            turn=ns.turns,
            question=question,
            missing_fields=missing,
            expires_at=expires,
        )

    def on_input(self, cmd: ProvideInput) -> None:
        waiting = [k for k, v in self.s.nodes.items() if v.status == "waiting_input"]
        node_id = cmd.data.node_id or (waiting[0] if len(waiting) == 1 else None)
        if node_id is None or node_id not in waiting:
            reason = (
                "no node is waiting for input"
                if not waiting
                else f"node {cmd.data.node_id!r} is not waiting for input (waiting: {waiting})"
            )
            self.emit(ExecutionCommandRejected, command_type=cmd.type, reason=reason)
            return
        ns = self.s.nodes[node_id]
        self._disarm_node(node_id)
        ns.conversation.append({"role": "user", "content": dict(cmd.data.input)})
        self.emit(InputReceived, node_id=node_id, turn=ns.turns, input=dict(cmd.data.input))
        ns.status = "pending"
        if not any(v.status == "waiting_input" for v in self.s.nodes.values()):
            self.s.status = "running"
        self._dispatch(self.s.node(node_id))

    def on_timer(self, cmd: FireTimer) -> None:
        timer = self.s.timers.pop(cmd.data.timer_id, None)
        if timer is None:
            return  # already fired or disarmed
        node_id = timer.node_id
        if timer.kind == "flow_timeout":
            self._fail(
                None, f"flow '{self.s.flow.flow_id}' timed out after {self.s.flow.timeout:g}s"
            )
        elif node_id is None:
            return
        elif timer.kind == "node_timeout":
            ns = self.s.nodes[node_id]
            if ns.status == "dispatched" and ns.attempt == timer.attempt:
                node = self.s.node(node_id)
                seconds = node.config.timeout or self.env.default_node_timeout_s
                self._attempt_failed(node, f"timed out after {seconds:g}s")
        elif timer.kind == "retry":
            if self.s.nodes[node_id].status == "pending":
                self._dispatch(self.s.node(node_id))
        elif timer.kind == "input_timeout":
            if self.s.nodes[node_id].status == "waiting_input":
                self._fail(node_id, f"node '{node_id}': no input arrived before input_timeout")
        elif timer.kind == "agent_wait":
            self._agent_wait_over(self.s.node(node_id), timer)

    def _agent_wait_over(self, node: FlowNode, timer: Timer) -> None:
        """``wait_for_agent`` ran out: fail if the agent is still not back; an agent that is
        back leaves the node waiting for its turn (the partition resumes it)."""
        ns = self.s.nodes[node.id]
        if ns.status != "waiting_agent" or node.agent_id is None:
            return
        availability = self.env.agent_availability(node.agent_id)
        if availability == "active":
            if ns.wait_reason != "capacity":
                ns.wait_reason = "capacity"
                self.emit(
                    NodeWaitingAgent,
                    node_id=node.id,
                    agent_id=node.agent_id,
                    reason="capacity",
                    detail=f"agent '{node.agent_id}' is back; waiting for a slot",
                )
            return
        started = ns.wait_started_at or timer.due_at
        waited = (timer.due_at - started).total_seconds()
        self._fail(
            node.id,
            f"node '{node.id}': agent '{node.agent_id}' is {availability} (waited {waited:g}s)",
        )

    def _attempt_failed(self, node: FlowNode, error: str) -> None:
        ns = self.s.nodes[node.id]
        ns.failures += 1
        will_retry = ns.failures <= node.config.retries
        retry_at = None
        if will_retry:
            backoff = min(node.config.retry_backoff * 2 ** (ns.failures - 1), MAX_BACKOFF_S)
            retry_at = self.env.now + timedelta(seconds=backoff)
            ns.status = "pending"
            self._arm("retry", backoff, node.id, ns.attempt)
        self.emit(
            NodeFailed,
            node_id=node.id,
            attempt=ns.attempt,
            agent_id=node.agent_id,
            error_message=error,
            will_retry=will_retry,
            retry_at=retry_at,
        )
        if not will_retry:
            tries = f" after {ns.attempt} attempt(s)" if ns.attempt > 1 else ""
            self._fail(node.id, f"node '{node.id}' failed{tries}: {error}", already_emitted=True)

    def cancel(self, reason: str) -> None:
        self._stop_in_flight(reason)
        self.s.status = "cancelled"
        self.s.timers.clear()
        usage = self._usage("cancelled")
        self.emit(
            ExecutionCancelled,
            reason=reason,
            duration_ms=self._duration(),
            usage=self._shown(usage),
        )
        self._settle("cancelled", usage)

    # --- endings -----------------------------------------------------------------------
    def _fail(self, node_id: str | None, message: str, *, already_emitted: bool = False) -> None:
        if node_id is not None:
            ns = self.s.nodes[node_id]
            ns.status = "failed"
            ns.error = message
            if not already_emitted:
                node = self.s.node(node_id)
                self.emit(
                    NodeFailed,
                    node_id=node_id,
                    attempt=ns.attempt,
                    agent_id=node.agent_id,
                    error_message=message,
                    will_retry=False,
                )
        self._stop_in_flight(message)
        self.s.status = "failed"
        self.s.error_message = message
        self.s.timers.clear()
        usage = self._usage("failed")
        self.emit(
            ExecutionFailed,
            error_message=message,
            node_id=node_id,
            duration_ms=self._duration(),
            usage=self._shown(usage),
        )
        self._settle("failed", usage)

    def _complete(self) -> None:
        exits = self.s.flow.exit_points or _derived_exits(self.s.flow)
        output = {
            e: self.s.nodes[e].output or {} for e in exits if self.s.nodes[e].status == "completed"
        }
        self.s.status = "completed"
        self.s.timers.clear()
        usage = self._usage("completed")
        self.emit(
            ExecutionCompleted,
            output_data=output,
            duration_ms=self._duration(),
            usage=self._shown(usage),
        )
        self._settle("completed", usage)

    def _stop_in_flight(self, reason: str) -> None:
        for node in self.s.flow.nodes:
            ns = self.s.nodes[node.id]
            if ns.status in ("dispatched", "waiting_input", "waiting_agent", "pending"):
                ns.wait_reason = None
                if ns.status == "dispatched" and node.agent_id:
                    cancel = AgentCancel.build(
                        cause=self.cause,
                        correlation_id=self.s.correlation_id,
                        tenant_id=self.s.user_id,
                        trace=self.s.trace,
                        execution_id=self.s.execution_id,
                        node_id=node.id,
                        reason=reason,
                    )
                    self.decision.tasks.append(Task(node.agent_id, cancel))
                ns.status = "cancelled"

    def _usage(self, outcome: Outcome) -> ExecutionUsage:
        return usage_of(self.s, outcome)

    def _shown(self, usage: ExecutionUsage) -> ExecutionUsage | None:
        """On the terminal event only when metered: an unpriced, tokenless run's events
        stay as they were."""
        return usage if self.s.metered else None

    def _settle(self, outcome: Outcome, usage: ExecutionUsage) -> None:
        self.decision.commands.append(
            SettleCredits.build(
                cause=self.cause,
                correlation_id=self.s.correlation_id,
                tenant_id=self.s.user_id,
                trace=self.s.trace,
                user_id=self.s.user_id,
                execution_id=self.s.execution_id,
                outcome=outcome,
                charge=usage.charge,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
            )
        )

    def _duration(self) -> float:
        return _ms(self.env.now - self.s.started_at)


def credit_charge(state: ExecutionState, outcome: str) -> int:
    """What the policy asks (docs/credits.md), before the reservation caps it: the tokens
    counted, rounded up once, always (the provider was paid), plus the base price when
    the run completed or was cancelled after an agent delivered work. A failed run pays no
    base price: the platform or an agent failed, not the user. Without pricing the base
    price is the reservation and tokens cost nothing, as before credits per token."""
    tokens = whole_credits(state.token_credits)
    if outcome == "completed":
        return state.base_price + tokens
    if outcome == "cancelled":
        worked = any(
            ns.status == "completed" and state.node(nid).agent_id is not None
            for nid, ns in state.nodes.items()
        )
        return (state.base_price if worked else 0) + tokens
    return tokens


def usage_of(state: ExecutionState, outcome: str) -> ExecutionUsage:
    """The usage and the charge of a run ending with ``outcome``: never charged past the
    reservation; what the policy asks beyond it is the overshoot."""
    charge = credit_charge(state, outcome)
    charged = min(charge, state.credits_reserved)
    return ExecutionUsage(
        input_tokens=state.input_tokens,
        output_tokens=state.output_tokens,
        token_credits=round(state.token_credits, 6),
        charge=charge,
        charged=charged,
        overshoot=charge - charged,
        untrusted=state.untrusted,
    )


def _derived_exits(flow: FlowDefinition) -> tuple[str, ...]:
    has_dependents = {d for n in flow.nodes for d in n.depends_on}
    return tuple(n.id for n in flow.nodes if n.id not in has_dependents)


def _previous_agent(state: ExecutionState, node: FlowNode) -> str | None:
    for dep in node.depends_on:
        agent = state.node(dep).agent_id
        if agent:
            return agent
    return None


def _copy(state: ExecutionState) -> ExecutionState:
    return replace(
        state,
        nodes={
            k: replace(v, conversation=list(v.conversation), output=v.output)
            for k, v in state.nodes.items()
        },
        timers={k: replace(v) for k, v in state.timers.items()},
        input_data=state.input_data,
    )


def _ms(delta: timedelta) -> float:
    return round(delta.total_seconds() * 1000, 3)


def _dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


#: flow_version -> (definition, its JSON form): a flow's version is the hash of its
#: normalised definition, so every execution of one version shares one dump.
_FLOW_JSON: dict[str, tuple[FlowDefinition, dict[str, Any]]] = {}
_FLOW_JSON_MAX = 256


def _flow_json(flow: FlowDefinition, version: str) -> dict[str, Any]:
    cached = _FLOW_JSON.get(version)
    if cached is not None and (cached[0] is flow or cached[0] == flow):
        return cached[1]
    dumped = flow.model_dump(mode="json")
    if len(_FLOW_JSON) >= _FLOW_JSON_MAX:
        _FLOW_JSON.pop(next(iter(_FLOW_JSON)))
    _FLOW_JSON[version] = (flow, dumped)
    return dumped


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _node_json(n: NodeState) -> dict[str, Any]:
    return {
        "status": n.status,
        "attempt": n.attempt,
        "failures": n.failures,
        "turns": n.turns,
        "output": n.output,
        "error": n.error,
        "dispatched_at": _iso(n.dispatched_at),
        "wait_started_at": _iso(n.wait_started_at),
        "wait_reason": n.wait_reason,
        "conversation": n.conversation,
    }


def _timer_json(t: Timer) -> dict[str, Any]:
    return {
        "timer_id": t.timer_id,
        "kind": t.kind,
        "due_at": t.due_at.isoformat(),
        "node_id": t.node_id,
        "attempt": t.attempt,
    }


# --- decisions too large to carry (limits.py says when) ------------------------------------


def fail_at_once(
    state: ExecutionState, cause: Message, env: Environment, node_id: str | None, error: str
) -> Decision:
    """``cause`` fails the execution now: its node ``node_id`` (if any), then the execution,
    with ``error``; in-flight tasks are cancelled and the credits settled as for any failure."""
    run = _Run(state, cause, env)
    run._fail(node_id, error)
    return run.decision


def refuse_start(cmd: StartExecution, env: Environment, error: str) -> Decision:
    """A start whose execution cannot be carried: recorded without its input and metadata
    (the trail still says who started which flow), then failed with ``error``."""
    run = _Run(replace(_new_state(cmd, env), input_data={}, metadata={}), cmd, env)
    run.emit(ExecutionStarted, **run._started_fields())
    run._fail(None, error)
    return run.decision
