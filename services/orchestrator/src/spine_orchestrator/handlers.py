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

Each partition keeps a :class:`~.dispatch.CapacityLedger`: decisions ask it before they
dispatch, and after every batch the partition dispatches the nodes waiting for an agent that
has room, one tenant at a time (:func:`domain.resume_node`). When an agent comes back (or
gets a larger ``concurrency``), :meth:`OrchestratorHandler.agent_changed` sends one
``ResumeDispatch`` to each partition where nodes wait for it, so the wait ends on the
agent's return, not on a polling timer.

Every record must fit in one Kafka message (docs/limits.md). A batch is decided, and each
of its records encoded (the producer sends those bytes) and measured; in the rare batch
where one would not fit, the batch is decided again from the same states with every
decision checked by :func:`.limits.decide_within`, which replaces one that would not fit by
the failure of its node or execution. So an oversized output never aborts a transaction,
and the other executions of the batch are decided as they were.
"""

from __future__ import annotations

import math
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
    Message,
    ProvideInput,
    ReleaseExecution,
    ResumeDispatch,
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
from .dispatch import CapacityLedger
from .domain import AnyState, Decision, Environment, FinishedExecution, state_from_dict
from .encodings import Encodings, within_limit
from .limits import MessageLimit, decide_within, resume_within
from .timers import TimerScheduler

log = get_logger(__name__)

#: the loop's consumer name (app.py): dead letters of refused results carry it
CONSUMER = "orchestrator"
INPUTS = (
    StartExecution,
    CancelExecution,
    ProvideInput,
    FireTimer,
    AgentResult,
    ReleaseExecution,
    ResumeDispatch,
)
ConditionEvaluator = Callable[[str, Mapping[str, Any], Mapping[str, Any]], bool]
DeadLetterFn = Callable[[ConsumerRecord[Any, Any], Exception], Awaitable[None]]
#: publishes a command on ``spine.executions.commands`` keyed by the execution id
SendCommand = Callable[[Message, str], Awaitable[None]]


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
        partitions: int = 1,
        send_command: SendCommand | None = None,
        default_agent_wait_s: float = 60.0,
    ) -> None:
        self._cfg = cfg
        self._partitions = max(1, partitions)
        self._send_command = send_command
        self._agent_wait = default_agent_wait_s
        self._ledgers: dict[int, CapacityLedger] = {}
        #: execution -> its state before the batch being handled (None: it had none)
        self._undo: dict[str, AnyState | None] = {}
        self._dead_letter = dead_letter
        self._catalog = catalog
        self._timers = timers
        self._evaluate = evaluate_condition
        self._node_timeout = default_node_timeout_s
        self._input_timeout = default_input_timeout_s
        self._clock = clock
        self._states: dict[int, dict[str, AnyState]] = {}
        #: unfinished executions per partition, kept as states change (a gauge read every
        #: second: counting the states, finished ones included, grew with the history)
        self._live: dict[int, int] = {}
        self._topic_events = cfg.topic(topics.EXECUTION_EVENTS)
        self._topic_snapshots = cfg.topic(topics.EXECUTION_SNAPSHOTS)
        self._topic_auth = cfg.topic(topics.AUTH_COMMANDS)

    @property
    def live_executions(self) -> int:
        return sum(self._live.values())

    def _recount(self, partition: int) -> int:
        states = self._states.get(partition, {})
        self._live[partition] = live = sum(1 for s in states.values() if not s.terminal)
        return live

    def _env(self, ledger: CapacityLedger) -> Environment:
        return Environment(
            now=self._clock(),
            agent_availability=self._catalog.availability,
            agent_owner=self._catalog.owner,
            evaluate_condition=self._evaluate,
            default_node_timeout_s=self._node_timeout,
            default_input_timeout_s=self._input_timeout,
            admit=ledger.admit,
            default_agent_wait_s=self._agent_wait,
        )

    def share(self, agent_id: str) -> int | None:
        """An agent's share of one partition: ⌈concurrency / partitions⌉ (``None``: no cap)."""
        concurrency = self._catalog.concurrency(agent_id)
        return None if concurrency is None else math.ceil(concurrency / self._partitions)

    def _ledger(self, partition: int) -> CapacityLedger:
        ledger = self._ledgers.get(partition)
        if ledger is None:
            ledger = self._ledgers[partition] = CapacityLedger(self.share)
        return ledger

    async def agent_changed(self, agent_id: str) -> None:
        """The agent is active (again, or with more room): wake each partition where nodes
        wait for it with one ``ResumeDispatch`` keyed by one of the waiting executions."""
        if self._send_command is None or self._catalog.availability(agent_id) != "active":
            return
        for ledger in list(self._ledgers.values()):
            waiting = ledger.waiting_for(agent_id)
            if waiting:
                execution_id = waiting[0][0]
                wake = ResumeDispatch.build(execution_id=execution_id, agent_id=agent_id)
                await self._send_command(wake, execution_id)

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
        ledger = self._ledger(partition)
        ledger.rebuild(states.values())
        for state in states.values():
            self._timers.sync(state)
        for agent_id in ledger.waiting_agents():  # an agent that came back while we were away
            await self.agent_changed(agent_id)
        live = self._recount(partition)
        log.info("partition_state_loaded", partition=partition, executions=len(states), live=live)

    async def _poison(self, record: ConsumerRecord[Any, Any], error: Exception) -> None:
        log.error("snapshot_skipped", **problem_fields(record, error))
        if self._dead_letter is not None:
            await self._dead_letter(record, error)

    async def on_revoked(self, partition: int) -> None:
        states = self._states.pop(partition, {})
        self._live.pop(partition, None)
        self._ledgers.pop(partition, None)
        self._timers.forget(states)

    async def handle(self, partition: int, batch: Sequence[Incoming]) -> Sequence[Outgoing]:
        """Decide the batch; should a record not fit in one message, decide it again from
        the same states with every decision checked (:func:`.limits.decide_within`)."""
        states = self._states.setdefault(partition, {})
        self._undo = {}
        out = await self._handle(partition, batch, Encodings(checked=False))
        if within_limit(out, self._cfg.max_value_bytes):  # the usual case, at no extra cost
            return out
        # Back to the states before the batch: decisions make new state objects, so those
        # _apply replaced are intact; the capacity ledger is derived from the states.
        for execution_id, state in self._undo.items():
            if state is None:
                states.pop(execution_id, None)
            else:
                states[execution_id] = state
        self._ledger(partition).rebuild(states.values())
        self._recount(partition)
        log.warning("batch_over_message_limit", partition=partition, batch=len(batch))
        return await self._handle(partition, batch, Encodings(checked=True))

    async def _handle(
        self, partition: int, batch: Sequence[Incoming], encodings: Encodings
    ) -> list[Outgoing]:
        states = self._states.setdefault(partition, {})
        ledger = self._ledger(partition)
        env = self._env(ledger)
        limit = encodings.limit(self._cfg.max_value_bytes)
        out: list[Outgoing] = []
        changed: dict[str, AnyState] = {}
        last: Message | None = None
        for incoming in batch:
            message = incoming.message
            if not isinstance(message, INPUTS):
                raise PoisonMessage(f"the orchestrator does not handle {message.type!r}")
            last = message
            if isinstance(message, ResumeDispatch):
                continue  # a wake-up: the dispatch of waiting nodes below does the work
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
            self._apply(decision, execution_id, states, ledger, changed, out)
        if last is not None:
            self._dispatch_waiting(states, ledger, env, last, changed, out, limit)
        live = self._live.get(partition, 0)
        for execution_id, state in changed.items():
            snapshot = encodings.snapshot(state)
            out.append(Outgoing(self._topic_snapshots, execution_id, snapshot))
            self._timers.sync(state)
            before = self._undo.get(execution_id)  # the state before this batch
            live += (not state.terminal) - (before is not None and not before.terminal)
        self._live[partition] = live
        return encodings.attach(out)

    def _apply(
        self,
        decision: Decision,
        execution_id: str,
        states: dict[str, AnyState],
        ledger: CapacityLedger,
        changed: dict[str, AnyState],
        out: list[Outgoing],
    ) -> None:
        out.extend(self._effects(decision, execution_id))
        if decision.state is not None and decision.changed:
            if execution_id not in self._undo:  # what handle() restores for a second pass
                self._undo[execution_id] = states.get(execution_id)
            state = decision.state
            ledger.reconcile(state)
            if state.terminal and not isinstance(state, FinishedExecution):
                state = FinishedExecution.of(state)  # keep only what late input needs
            states[execution_id] = state
            changed[execution_id] = state

    def _dispatch_waiting(
        self,
        states: dict[str, AnyState],
        ledger: CapacityLedger,
        env: Environment,
        cause: Message,
        changed: dict[str, AnyState],
        out: list[Outgoing],
        limit: MessageLimit | None,
    ) -> None:
        """Hand the free slots of every active agent to its waiting nodes, tenant by tenant."""
        for agent_id in ledger.waiting_agents():
            if self._catalog.availability(agent_id) != "active":
                continue
            for _ in range(len(ledger.waiting_for(agent_id))):  # each waiting node once at most
                key = ledger.next_ready(agent_id)
                if key is None:
                    break
                execution_id, node_id = key
                state = states.get(execution_id)
                if state is None:  # cannot happen: a gone execution left the ledger
                    ledger.forget(execution_id)
                    continue
                decision = resume_within(state, node_id, cause, env, limit)
                if not decision.changed:
                    ledger.reconcile(state)  # not waiting after all: give the slot back
                self._apply(decision, execution_id, states, ledger, changed, out)

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
