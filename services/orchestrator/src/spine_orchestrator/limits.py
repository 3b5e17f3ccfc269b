"""Every record the orchestrator publishes fits in one Kafka message (docs/limits.md).

:func:`decide_within` is :func:`~.domain.decide` checked against a :class:`MessageLimit`:
every event, task and command of the decision, and the snapshot of the state it leaves,
must be at most ``limit.max_bytes`` once encoded. A decision that does not fit is replaced,
for its execution only and before anything is published — never an exception, which would
abort the batch's transaction and reset the partition under every execution on it:

* a result (a success, a question, an error) becomes the node's failed attempt, with an
  error naming the size and the limit, and the node's ``retries`` apply as to any failure:
  ``result of 812,345 bytes exceeds the 1,046,528-byte message limit``, or, when it is what
  the result leads to that does not fit, ``result of 600,210 bytes does not fit: the
  execution state would be 1,200,871 bytes, over the 1,046,528-byte message limit``;
* a start: ``ExecutionStarted`` without the input and metadata, then ``ExecutionFailed``
  (``input too large: ...``);
* a timer, an input, a cancel: the node it concerns fails at once, or the execution when
  it concerns none (``node 'b': task of 1,100,000 bytes exceeds the ... limit``); no retry,
  since the same dispatch would not fit again;
* when even that replacement does not fit (a state at the limit already), the execution
  fails: its failure events carry no payload, and what is kept of a finished execution is
  its small :class:`~.domain.FinishedExecution`.

Pure: the sizes come from the caller, which encodes each message once and publishes those
very bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from spine_contracts import (
    AgentMessage,
    AgentResult,
    FireTimer,
    Message,
    NodeCompleted,
    NodeDispatched,
    NodeFailed,
    NodeWaitingInput,
    ProvideInput,
    StartExecution,
)

from .domain import (
    AnyState,
    Decision,
    Environment,
    ExecutionState,
    FinishedExecution,
    decide,
    fail_at_once,
    refuse_start,
    resume_node,
)

#: the events that carry a result's own content: too large, they are the result too large
_RESULT_EVENTS = (NodeCompleted, NodeWaitingInput, NodeFailed)


@dataclass(frozen=True)
class MessageLimit:
    """The largest encoded message (``KafkaConfig.max_value_bytes``) and how to measure one."""

    max_bytes: int
    #: a message's encoded size
    size: Callable[[Message], int]
    #: the encoded size of the snapshot of a state (as kept: see :func:`kept`)
    state_size: Callable[[AnyState], int]


@dataclass(frozen=True)
class Oversize:
    """The first record of a decision that does not fit."""

    what: str  # "task", "execution.completed message", "execution state"
    size: int
    node_id: str | None = None
    message: Message | None = None

    def named(self, besides: str | None = None) -> str:
        """``what``, with the node it belongs to unless that is ``besides``."""
        if self.node_id and self.node_id != besides:
            return f"{self.what} for node '{self.node_id}'"
        return self.what


def too_large(what: str, size: int, limit: int) -> str:
    """``"<what> of 812,345 bytes exceeds the 1,046,528-byte message limit"`` (the wording of
    :func:`spine_kafka.limits.too_large`, which the domain layer does not import)."""
    return f"{what} of {size:,} bytes exceeds the {limit:,}-byte message limit"


def kept(state: AnyState) -> AnyState:
    """What is kept, and snapshotted, of a state: a finished execution's small form."""
    if isinstance(state, ExecutionState) and state.terminal:
        return FinishedExecution.of(state)
    return state


def oversize(decision: Decision, limit: MessageLimit) -> Oversize | None:
    """The first record of ``decision`` over the limit: its events in order (a task's own
    record, ``NodeDispatched``, comes before the task), tasks, commands, then its snapshot."""
    if not decision.changed:
        return None  # nothing is published for it
    for message in (*decision.events, *(t.message for t in decision.tasks), *decision.commands):
        size = limit.size(message)
        if size > limit.max_bytes:
            return Oversize(_what(message), size, _node_of(message), message)
    state = decision.state
    if state is not None and not state.terminal:  # a finished one is kept small: it fits
        size = limit.state_size(state)
        if size > limit.max_bytes:
            return Oversize("execution state", size)
    return None


def decide_within(
    state: AnyState | None, message: Message, env: Environment, limit: MessageLimit | None
) -> Decision:
    """:func:`~.domain.decide`, replaced by a failure when its records would not fit
    (``limit`` ``None``: unchecked, the caller measures what it publishes itself)."""
    decision = decide(state, message, env)
    if limit is None:
        return decision
    problem = oversize(decision, limit)
    if problem is None:
        return decision
    if isinstance(message, StartExecution) and state is None:
        return refuse_start(message, env, f"input too large: {_too_large(problem, limit)}")
    if not isinstance(state, ExecutionState):
        return decision  # a finished execution only rejects commands: nothing large
    if isinstance(message, AgentResult):
        replaced = decide(state, _failed_result(message, problem, limit), env)
    else:
        node_id = _node_concerned(state, message)
        error = _too_large(problem, limit, node_id)
        replaced = fail_at_once(
            state, message, env, node_id, f"node '{node_id}': {error}" if node_id else error
        )
    if oversize(replaced, limit) is not None:  # a state at the limit already
        return fail_at_once(state, message, env, None, _too_large(problem, limit))
    return replaced


def resume_within(
    state: AnyState, node_id: str, cause: Message, env: Environment, limit: MessageLimit | None
) -> Decision:
    """:func:`~.domain.resume_node` (a node that waited for its agent is dispatched),
    replaced by the node's failure when its task or the state would not fit."""
    decision = resume_node(state, node_id, cause, env)
    if limit is None or not isinstance(state, ExecutionState):
        return decision
    problem = oversize(decision, limit)
    if problem is None:
        return decision
    error = f"node '{node_id}': {_too_large(problem, limit, node_id)}"
    replaced = fail_at_once(state, cause, env, node_id, error)
    if oversize(replaced, limit) is not None:
        return fail_at_once(state, cause, env, None, _too_large(problem, limit))
    return replaced


def _too_large(problem: Oversize, limit: MessageLimit, besides: str | None = None) -> str:
    return too_large(problem.named(besides), problem.size, limit.max_bytes)


def _failed_result(result: AgentResult, problem: Oversize, limit: MessageLimit) -> AgentResult:
    """``result`` as the error it amounts to: the same node, attempt and message id."""
    r = result.data
    if problem.node_id == r.node_id and isinstance(problem.message, _RESULT_EVENTS):
        error = too_large("result", problem.size, limit.max_bytes)
    else:
        error = (
            f"result of {limit.size(result):,} bytes does not fit: the {problem.named()} "
            f"would be {problem.size:,} bytes, over the {limit.max_bytes:,}-byte message limit"
        )
    data = r.model_copy(
        update={
            "status": "error",
            "output": {},
            "error_message": error,
            "question": None,
            "missing_fields": (),
        }
    )
    return result.model_copy(update={"data": data})


def _node_concerned(state: ExecutionState, message: Message) -> str | None:
    if isinstance(message, FireTimer):
        timer = state.timers.get(message.data.timer_id)
        return timer.node_id if timer is not None else None
    if isinstance(message, ProvideInput):
        waiting = [k for k, v in state.nodes.items() if v.status == "waiting_input"]
        wanted = message.data.node_id
        if wanted in waiting:
            return wanted
        return waiting[0] if wanted is None and len(waiting) == 1 else None
    return None  # a cancel concerns the execution


def _what(message: Message) -> str:
    if isinstance(message, AgentMessage | NodeDispatched):  # the task, and its record
        return "task"
    return f"{message.type} message"


def _node_of(message: Message) -> str | None:
    node_id = getattr(message.data, "node_id", None)
    return node_id if isinstance(node_id, str) else None
