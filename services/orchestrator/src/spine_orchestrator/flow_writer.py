"""The flow catalogue's single writer on the bus: ``spine.flows.commands`` in, ``spine.flows``,
``spine.audit`` and the gateway's replies out, in one Kafka transaction per batch.

It is a :class:`~spine_servicekit.txloop.TransactionalLoop` handler of its own consumer
group (``<prefix>flow-catalog``), next to the execution loop in the orchestrator's process.
The commands topic has one partition, so one replica of the orchestrator decides every
flow write, in order; the others stand by in the group.

When the partition is assigned (after its transactional producer fenced any previous
owner, whose transactions are then complete), the catalogue is rebuilt by reading every
partition of ``spine.flows`` to its end (read_committed). That is the whole state: this
writer is the only producer of ``spine.flows``. A record there that does not decode is
skipped — the gateway's projector dead-letters it — so it cannot keep the writer from
starting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import structlog
from spine_contracts import ContractError, DefineFlow, DeleteFlow, Message, topics
from spine_servicekit.kafka import (
    KafkaConfig,
    Outgoing,
    decode_record,
    partitions_of,
    problem_fields,
    read_partition,
)
from spine_servicekit.logging import get_logger
from spine_servicekit.txloop import Incoming, PoisonMessage, TransactionalLoop

from .errors import FlowErrorCode
from .flow_catalog import Decision, FlowCatalog, decide, evolve, replay

log = get_logger(__name__)

#: Reads ``spine.flows`` from its beginning to its end, in batches (tests replace it).
HistoryReader = Callable[[], AsyncIterator[Sequence[Message]]]


class FlowWriter:
    """Holds the catalogue while this replica owns the commands' partition."""

    def __init__(self, cfg: KafkaConfig, *, history: HistoryReader | None = None) -> None:
        self._cfg = cfg
        self._history = history or self._read_flows
        self._catalogs: dict[int, FlowCatalog] = {}
        self._topic_flows = cfg.topic(topics.FLOWS)
        self._topic_audit = cfg.topic(topics.AUDIT)
        self._topic_replies = cfg.topic(topics.GATEWAY_REPLIES)

    def catalog(self, partition: int = 0) -> FlowCatalog | None:
        """The catalogue decided on for ``partition``, while it is owned here."""
        return self._catalogs.get(partition)

    # -- PartitionHandler ------------------------------------------------------------------

    async def on_assigned(self, partition: int) -> None:
        catalog = FlowCatalog()
        records = 0
        async for batch in self._history():
            replay(catalog, batch)
            records += len(batch)
        self._catalogs[partition] = catalog
        log.info(
            "flow_catalog_loaded", partition=partition, flows=len(catalog.flows), records=records
        )

    async def on_revoked(self, partition: int) -> None:
        self._catalogs.pop(partition, None)

    async def handle(self, partition: int, batch: Sequence[Incoming]) -> Sequence[Outgoing]:
        catalog = self._catalogs.setdefault(partition, FlowCatalog())
        out: list[Outgoing] = []
        for incoming in batch:
            message = incoming.message
            if not isinstance(message, DefineFlow | DeleteFlow):
                raise PoisonMessage(f"the flow catalogue does not handle {message.type!r}")
            flow_id = message.data.flow_id
            if incoming.key != flow_id:
                # another flow's commands would not be ordered with this one's
                raise PoisonMessage(f"{message.type}: key {incoming.key!r} is not {flow_id!r}")
            with structlog.contextvars.bound_contextvars(
                message_id=str(message.message_id), correlation_id=message.correlation_id
            ):
                decision = decide(catalog, message)
                _log_decision(message, decision, catalog)
            for event in decision.events:
                evolve(catalog, event)
            out.extend(self._effects(flow_id, decision, incoming.reply_to))
        return out

    # -- helpers ---------------------------------------------------------------------------

    def _effects(self, flow_id: str, decision: Decision, reply_to: str | None) -> list[Outgoing]:
        out = [Outgoing(self._topic_flows, flow_id, event) for event in decision.events]
        out += [Outgoing(self._topic_audit, flow_id, record) for record in decision.audit]
        if decision.reply is not None and reply_to:
            out.append(Outgoing(self._topic_replies, reply_to, decision.reply, reply_to=reply_to))
        return out

    async def _read_flows(self) -> AsyncIterator[Sequence[Message]]:
        for partition in await partitions_of(self._cfg, self._topic_flows):
            async for records in read_partition(self._cfg, self._topic_flows, partition):
                batch: list[Message] = []
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        batch.append(decode_record(record, self._cfg.prefix))
                    except ContractError as exc:
                        log.error("flow_record_skipped", **problem_fields(record, exc))
                yield batch


def make_flow_writer_loop(
    cfg: KafkaConfig, writer: FlowWriter, *, max_batch: int = 500
) -> TransactionalLoop:
    """The loop every orchestrator replica runs for the catalogue: one group, one
    transactional id for the commands' single partition."""
    return TransactionalLoop(
        cfg,
        group_id=f"{cfg.prefix}flow-catalog",
        input_topics=[cfg.topic(topics.FLOW_COMMANDS)],
        handler=writer,
        transactional_id_prefix=f"{cfg.prefix}flow-catalog",
        consumer_name="flow-catalog",
        max_batch=max_batch,
    )


def _log_decision(
    command: DefineFlow | DeleteFlow, decision: Decision, catalog: FlowCatalog
) -> None:
    d = command.data
    if decision.refused is None:
        log.info(
            "flow_command_decided",
            command=command.type,
            flow_id=d.flow_id,
            owner=d.owner,
            source=d.source,
            events=[e.type for e in decision.events],
        )
        return
    current = catalog.flows.get(d.flow_id)
    fields = {
        "command": command.type,
        "flow_id": d.flow_id,
        "owner": d.owner,
        "source": d.source,
        "source_path": d.source_path,
        "code": decision.refused,
        "reason": decision.reason,
        "current_owner": current.owner if current is not None else None,
    }
    if d.source == "file" and decision.refused != FlowErrorCode.FLOW_NOT_FROM_FILE:
        # nobody waits for a file's answer: an operator must see that it was not taken
        log.error("flow_file_refused", **fields)
    else:
        log.warning("flow_command_refused", **fields)
