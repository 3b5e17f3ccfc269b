"""Auth's side of the transactional loop: the accounts of each owned partition, decisions.

Input: ``spine.auth.commands`` (key user_id). For a batch of one partition every command
goes through :func:`domain.decide`; its events (``spine.auth.events``, key user_id), the
``StartExecution``/``CancelExecution`` it causes (``spine.executions.commands``, key
execution_id) and the gateway's answer (``spine.gateway.replies``, key = the command's
reply-to header, which the reply carries too) come back as :class:`Outgoing` records that
the loop commits in one transaction with the command offsets.

State is rebuilt by folding ``spine.auth.events`` partition *p* from the beginning when
*p* is assigned. That relies on co-partitioning: the events topic has the commands
topic's partition count and both are keyed by user_id with the default (murmur2)
partitioner, so the events of every user whose commands are on partition *p* are on
events partition *p* too. :func:`spine_auth.app.check_co_partitioned` verifies the counts
at start-up; a command whose key is not its user_id, or that sits on another partition
than its user_id hashes to, is dead-lettered rather than decided (its events would land
where the rebuild of *p* cannot see them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

import structlog
from aiokafka.partitioner import murmur2
from spine_contracts import AuthCommandRejected, ContractError, Message, topics
from spine_servicekit.kafka import (
    KafkaConfig,
    Outgoing,
    decode_record,
    problem_fields,
    read_partition,
)
from spine_servicekit.logging import get_logger
from spine_servicekit.txloop import Incoming, PoisonMessage

from .domain import COMMAND_TYPES, Decision, Limits, UserAccount, decide, replay
from .errors import MisroutedCommand

log = get_logger(__name__)

#: Reads the auth events of one partition, in order, in batches.
HistoryReader = Callable[[int], AsyncIterator[Sequence[Message]]]


def partition_for(key: str, partition_count: int) -> int:
    """The partition aiokafka's (and Kafka's) default partitioner picks for ``key``."""
    hashed: int = murmur2(key.encode())
    return (hashed & 0x7FFFFFFF) % partition_count


class AuthHandler:
    """Holds the accounts of the partitions this instance owns; one writer per user."""

    def __init__(
        self,
        cfg: KafkaConfig,
        *,
        partition_count: int | None = None,
        history: HistoryReader | None = None,
        limits: Limits | None = None,
    ) -> None:
        """``partition_count`` of the commands topic enables the routing check;
        ``history`` replaces reading ``spine.auth.events`` from Kafka (tests); ``limits``
        are the service's defaults (the partition's load is counted here)."""
        self._cfg = cfg
        self._limits = limits or Limits()
        #: partition -> executions accepted and not started (every user's queue)
        self._queued: dict[int, int] = {}
        self._partition_count = partition_count
        self._history = history or self._read_events
        self._accounts: dict[int, dict[str, UserAccount]] = {}
        self._topic_events = cfg.topic(topics.AUTH_EVENTS)
        self._topic_executions = cfg.topic(topics.EXECUTION_COMMANDS)
        self._topic_replies = cfg.topic(topics.GATEWAY_REPLIES)

    def account(self, user_id: str) -> UserAccount | None:
        """The current account of ``user_id`` if its partition is owned here."""
        for accounts in self._accounts.values():
            if user_id in accounts:
                return accounts[user_id]
        return None

    @property
    def partitions(self) -> list[int]:
        return sorted(self._accounts)

    # -- PartitionHandler ------------------------------------------------------------------

    async def on_assigned(self, partition: int) -> None:
        accounts: dict[str, UserAccount] = {}
        events = 0
        async for batch in self._history(partition):
            replay(accounts, batch)
            events += len(batch)
        self._accounts[partition] = accounts
        self._queued[partition] = sum(len(a.queue) for a in accounts.values())
        log.info("auth_partition_loaded", partition=partition, users=len(accounts), events=events)

    async def on_revoked(self, partition: int) -> None:
        self._accounts.pop(partition, None)
        self._queued.pop(partition, None)

    def queued(self, partition: int) -> int:
        """Accepted-but-not-started executions of the partition (for its cap)."""
        return self._queued.get(partition, 0)

    async def handle(self, partition: int, batch: Sequence[Incoming]) -> Sequence[Outgoing]:
        accounts = self._accounts.setdefault(partition, {})
        out: list[Outgoing] = []
        for incoming in batch:
            message = incoming.message
            if not isinstance(message, COMMAND_TYPES):
                raise PoisonMessage(f"auth does not handle {message.type!r}", incoming)
            user_id: str = message.data.user_id  # type: ignore[attr-defined]
            try:
                self._check_routing(partition, incoming, user_id)
            except MisroutedCommand as exc:
                raise PoisonMessage(str(exc), incoming) from exc
            with structlog.contextvars.bound_contextvars(
                message_id=str(message.message_id),
                correlation_id=message.correlation_id,
                execution_id=getattr(message.data, "execution_id", None),
            ):
                before = accounts.get(user_id)
                limits = replace(self._limits, partition_queued=self.queued(partition))
                decision = decide(before, message, limits)
                _log_decision(message, decision)
            if decision.state is not None:
                accounts[user_id] = decision.state
                waiting = len(decision.state.queue) - (len(before.queue) if before else 0)
                self._queued[partition] = self.queued(partition) + waiting
            out.extend(self._effects(user_id, decision, incoming.reply_to))
        return out

    # -- helpers ---------------------------------------------------------------------------

    def _check_routing(self, partition: int, incoming: Incoming, user_id: str) -> None:
        if incoming.key != user_id:
            raise MisroutedCommand(
                f"{incoming.message.type}: key {incoming.key!r} is not its user_id {user_id!r}"
            )
        count = self._partition_count
        if count is not None and partition_for(user_id, count) != partition:
            raise MisroutedCommand(
                f"{incoming.message.type}: user {user_id!r} belongs on partition "
                f"{partition_for(user_id, count)}, not {partition} (another partitioner?)"
            )

    def _effects(self, user_id: str, decision: Decision, reply_to: str | None) -> list[Outgoing]:
        out = [Outgoing(self._topic_events, user_id, event) for event in decision.events]
        out += [
            Outgoing(self._topic_executions, command.data.execution_id, command)
            for command in decision.commands
        ]
        if decision.reply is not None and reply_to:
            out.append(Outgoing(self._topic_replies, reply_to, decision.reply, reply_to=reply_to))
        return out

    async def _read_events(self, partition: int) -> AsyncIterator[Sequence[Message]]:
        """The partition's events in order. A record that is not an auth event cannot be a
        decision of auth (only its transactions write here): it is skipped, never allowed
        to keep the partition from starting; auth's projector dead-letters it."""
        async for records in read_partition(self._cfg, self._topic_events, partition):
            batch: list[Message] = []
            for record in records:
                if record.value is None:
                    continue
                try:
                    batch.append(decode_record(record, self._cfg.prefix))
                except ContractError as exc:
                    log.error("auth_event_skipped", **problem_fields(record, exc))
            yield batch


def _log_decision(command: Message, decision: Decision) -> None:
    rejected = [e for e in decision.events if isinstance(e, AuthCommandRejected)]
    if rejected:
        log.warning("auth_command_rejected", command=command.type, reason=rejected[0].data.reason)
        return
    log.debug(
        "auth_command_decided",
        command=command.type,
        events=[e.type for e in decision.events],
        commands=[c.type for c in decision.commands],
        reply_ok=decision.reply.data.ok if decision.reply is not None else None,
    )
