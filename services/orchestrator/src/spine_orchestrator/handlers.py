"""The orchestrator's side of the transactional loop: state per partition, decisions.

For a batch of one partition, every input goes through :func:`domain.decide`; the events,
agent tasks, settle-credits commands and the snapshot of every execution that changed
come back as :class:`Outgoing` records, which the loop commits in one transaction with
the input offsets. State is rebuilt from the snapshots topic when a partition is assigned;
a snapshot record that does not decode (only a foreign producer can write one) is
skipped and handed to ``dead_letter``, so it can never keep a partition from starting.

An ``AgentResult`` must carry the signature of the agent its task was sent to
(:mod:`.authenticity`); one that does not changes nothing: it becomes a dead letter in
the batch's transaction (with the reason), is counted in
``spine_signature_failures_total{consumer="orchestrator",reason}``, and the execution
goes on — the right agent's answer, or the node's timeout, decides the node.

Every record must fit in one Kafka message (docs/limits.md). A batch is decided, and each
of its records encoded (the producer sends those bytes) and measured; in the rare batch
where one would not fit, the batch is decided again from the same states with every
decision checked by :func:`.limits.decide_within`, which replaces one that would not fit by
the failure of its node or execution. So an oversized output never aborts a transaction,
and the other executions of the batch are decided as they were.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from aiokafka import ConsumerRecord
from spine_contracts import (
    AgentResult,
    CancelExecution,
    ContractError,
    ExecutionSnapshot,
    FireTimer,
    ProvideInput,
    StartExecution,
    topics,
    utcnow,
)
from spine_contracts.signing import SignatureRefused
from spine_kafka import ops
from spine_servicekit.kafka import (
    KafkaConfig,
    Outgoing,
    dead_letter_of,
    dead_letter_outgoing,
    decode_record,
    problem_fields,
    read_partition,
)
from spine_servicekit.logging import get_logger
from spine_servicekit.txloop import Incoming, PoisonMessage

from .authenticity import verify_result
from .catalog import AgentCatalog
from .domain import AnyState, Decision, Environment, FinishedExecution, state_from_dict
from .encodings import Encodings, within_limit
from .limits import decide_within
from .timers import TimerScheduler

log = get_logger(__name__)

#: the loop's consumer name (app.py): dead letters of refused results carry it
CONSUMER = "orchestrator"
INPUTS = (StartExecution, CancelExecution, ProvideInput, FireTimer, AgentResult)
ConditionEvaluator = Callable[[str, Mapping[str, Any], Mapping[str, Any]], bool]
DeadLetterFn = Callable[[ConsumerRecord[Any, Any], Exception], Awaitable[None]]


def execution_id_of(message: Any) -> str:
    return str(message.data.execution_id)


class OrchestratorHandler:
    """Holds the live executions of the partitions this instance owns."""

    def __init__(
        self,
        cfg: KafkaConfig,
        *,
        catalog: AgentCatalog,
        timers: TimerScheduler,
        evaluate_condition: ConditionEvaluator,
        default_node_timeout_s: float = 300.0,
        default_input_timeout_s: float = 3600.0,
        clock: Callable[[], datetime] = utcnow,
        dead_letter: DeadLetterFn | None = None,
    ) -> None:
        self._cfg = cfg
        self._dead_letter = dead_letter
        self._catalog = catalog
        self._timers = timers
        self._evaluate = evaluate_condition
        self._node_timeout = default_node_timeout_s
        self._input_timeout = default_input_timeout_s
        self._clock = clock
        self._states: dict[int, dict[str, AnyState]] = {}
        self._topic_events = cfg.topic(topics.EXECUTION_EVENTS)
        self._topic_snapshots = cfg.topic(topics.EXECUTION_SNAPSHOTS)
        self._topic_auth = cfg.topic(topics.AUTH_COMMANDS)

    @property
    def live_executions(self) -> int:
        return sum(1 for p in self._states.values() for s in p.values() if not s.terminal)

    def _env(self) -> Environment:
        return Environment(
            now=self._clock(),
            agent_availability=self._catalog.availability,
            agent_owner=self._catalog.owner,
            evaluate_condition=self._evaluate,
            default_node_timeout_s=self._node_timeout,
            default_input_timeout_s=self._input_timeout,
        )

    async def on_assigned(self, partition: int) -> None:
        states: dict[str, AnyState] = {}
        async for records in read_partition(self._cfg, self._topic_snapshots, partition):
            for record in records:
                if record.value is None:
                    continue
                try:
                    snapshot = decode_record(record, self._cfg.prefix)
                    assert isinstance(snapshot, ExecutionSnapshot)
                    state = state_from_dict(snapshot.data.state)
                    if state.terminal and not isinstance(state, FinishedExecution):
                        state = FinishedExecution.of(state)  # a full snapshot of older code
                except (ContractError, KeyError, TypeError, ValueError) as exc:
                    await self._poison(record, exc)
                    continue
                states[state.execution_id] = state
        self._states[partition] = states
        for state in states.values():
            self._timers.sync(state)
        live = sum(1 for s in states.values() if not s.terminal)
        log.info("partition_state_loaded", partition=partition, executions=len(states), live=live)

    async def _poison(self, record: ConsumerRecord[Any, Any], error: Exception) -> None:
        log.error("snapshot_skipped", **problem_fields(record, error))
        if self._dead_letter is not None:
            await self._dead_letter(record, error)

    async def on_revoked(self, partition: int) -> None:
        states = self._states.pop(partition, {})
        self._timers.forget(states)

    async def handle(self, partition: int, batch: Sequence[Incoming]) -> Sequence[Outgoing]:
        """Decide the batch; should a record not fit in one message, decide it again from
        the same states with every decision checked (:func:`.limits.decide_within`)."""
        states = self._states.setdefault(partition, {})
        inputs = [i.message for i in batch if isinstance(i.message, INPUTS)]
        before = {e: states.get(e) for e in map(execution_id_of, inputs)}
        out = await self._handle(partition, batch, Encodings(checked=False))
        if within_limit(out, self._cfg.max_value_bytes):  # the usual case, at no extra cost
            return out
        # Back to the states before the batch (decide makes new state objects, so these are
        # intact); whatever else _handle changes must be put back here too.
        for execution_id, state in before.items():
            if state is None:
                states.pop(execution_id, None)
            else:
                states[execution_id] = state
        log.warning("batch_over_message_limit", partition=partition, batch=len(batch))
        return await self._handle(partition, batch, Encodings(checked=True))

    async def _handle(
        self, partition: int, batch: Sequence[Incoming], encodings: Encodings
    ) -> list[Outgoing]:
        states = self._states.setdefault(partition, {})
        env = self._env()
        limit = encodings.limit(self._cfg.max_value_bytes)
        out: list[Outgoing] = []
        changed: dict[str, AnyState] = {}
        for incoming in batch:
            message = incoming.message
            if not isinstance(message, INPUTS):
                raise PoisonMessage(f"the orchestrator does not handle {message.type!r}")
            execution_id = execution_id_of(message)
            if isinstance(message, AgentResult):
                try:
                    verify_result(
                        incoming, states.get(execution_id), self._catalog, self._cfg.prefix
                    )
                except SignatureRefused as exc:
                    out.append(self._refused(incoming, exc))
                    continue
            decision = decide_within(states.get(execution_id), message, env, limit)
            out.extend(self._effects(decision, execution_id))
            if decision.state is not None and decision.changed:
                state = decision.state
                if state.terminal and not isinstance(state, FinishedExecution):
                    state = FinishedExecution.of(state)  # keep only what late input needs
                states[execution_id] = state
                changed[execution_id] = state
        for execution_id, state in changed.items():
            snapshot = encodings.snapshot(state)
            out.append(Outgoing(self._topic_snapshots, execution_id, snapshot))
            self._timers.sync(state)
        return encodings.attach(out)

    def _refused(self, incoming: Incoming, error: SignatureRefused) -> Outgoing:
        ops.SIGNATURE_FAILURES.labels(CONSUMER, error.reason).inc()
        log.warning(
            "result_signature_refused",
            execution_id=incoming.key,
            reason=error.reason,
            topic=incoming.topic,
            offset=incoming.offset,
            error=str(error),
        )
        letter = dead_letter_of(incoming, error, CONSUMER, max_bytes=self._cfg.max_value_bytes)
        return dead_letter_outgoing(self._cfg, letter)

    def _effects(self, decision: Decision, execution_id: str) -> list[Outgoing]:
        out = [Outgoing(self._topic_events, execution_id, e) for e in decision.events]
        out += [
            Outgoing(self._cfg.agent_tasks(t.agent_id), execution_id, t.message)
            for t in decision.tasks
        ]
        for command in decision.commands:
            out.append(Outgoing(self._topic_auth, str(command.data.user_id), command))  # type: ignore[attr-defined]
        return out
