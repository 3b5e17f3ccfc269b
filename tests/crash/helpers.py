"""Shared helpers of the crash-safety tests: events as the services write them, raw
publishing (poison included), waiting for dead letters, and the orchestrator's and auth's
loops and the registry's main run in this process with their real handlers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from aiokafka.structs import RecordMetadata
from spine_agent.testing import TopicReader
from spine_auth.handlers import AuthHandler
from spine_contracts import (
    AgentInfo,
    AgentMessage,
    AgentRegistered,
    AgentResult,
    AgentStatusChanged,
    AuditRecorded,
    CancelExecution,
    CreditsAdded,
    CreditsReserved,
    CreditsSettled,
    DeadLetter,
    ExecutionCommandRejected,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    FireTimer,
    FlowDefined,
    FlowDefinition,
    FlowDeleted,
    FlowNode,
    InputReceived,
    KeyRotated,
    Message,
    NodeCompleted,
    NodeDispatched,
    NodeFailed,
    NodeWaitingInput,
    ProvideInput,
    StartExecution,
    UsageRecorded,
    UserCreated,
    to_bytes,
    topics,
)
from spine_flows import evaluate_condition
from spine_orchestrator.catalog import AgentCatalog
from spine_orchestrator.handlers import OrchestratorHandler
from spine_orchestrator.timers import TimerScheduler
from spine_registry.app import main as registry_main
from spine_registry.settings import RegistrySettings
from spine_servicekit.kafka import (
    KafkaConfig,
    dead_letter,
    dead_letter_outgoing,
    headers_for,
    make_producer,
)
from spine_servicekit.runtime import ServiceContext
from spine_servicekit.txloop import TransactionalLoop
from support import signed, signer_of

FLOW = FlowDefinition(flow_id="f", nodes=(FlowNode(id="a", agent_id="echo"),))
Raw = tuple[str, bytes | Message, list[tuple[str, bytes]] | None]

#: Poison of every kind a consumer must survive: not JSON, not an object, unknown type,
#: invalid body, unsupported version.
POISON: dict[str, bytes] = {
    "not-json": b"\xff\xfe not json",
    "not-an-object": b"[1, 2, 3]",
    "unknown-type": b'{"type": "no.such_message", "data": {}}',
    "invalid-body": b'{"type": "execution.started", "data": {"execution_id": 5}}',
    "future-version": b'{"type": "execution.started", "version": 99, "data": {}}',
}


#: the two-node flow of :func:`execution_trail`
TRAIL_FLOW = FlowDefinition(
    flow_id="f", nodes=(FlowNode(id="a", agent_id="echo"), FlowNode(id="b", agent_id="echo"))
)


def execution_trail(eid: str, t0: datetime) -> list[Message]:
    """Every kind of execution event, one second apart from ``t0``: a node that fails once
    and is retried, a node that waits for input, completion, then a rejected late cancel.
    For the projections' "same rows whatever the batches and repeats" tests."""
    common: dict[str, Any] = {"execution_id": eid}
    cancel = CancelExecution.build(execution_id=eid)
    answer = ProvideInput.build(execution_id=eid, input={"x": 1})
    built: list[Message] = [
        ExecutionStarted.build(
            **common,
            seq=1,
            user_id="u",
            flow_id="f",
            flow_version="v",
            flow=TRAIL_FLOW,
            input_data={"in": 1},
        ),
        NodeDispatched.build(
            **common, seq=2, node_id="a", attempt=1, agent_id="echo", task_id=f"{eid}:t1"
        ),
        NodeFailed.build(
            **common,
            seq=3,
            node_id="a",
            attempt=1,
            agent_id="echo",
            error_message="boom",
            will_retry=True,
        ),
        NodeDispatched.build(
            **common, seq=4, node_id="a", attempt=2, agent_id="echo", task_id=f"{eid}:t2"
        ),
        NodeCompleted.build(
            **common, seq=5, node_id="a", attempt=2, agent_id="echo", output={"o": 1}
        ),
        NodeWaitingInput.build(**common, seq=6, node_id="b", attempt=1, turn=1, question="?"),
        InputReceived.build(cause=answer, **common, seq=7, node_id="b", turn=1, input={"x": 1}),
        NodeCompleted.build(**common, seq=8, node_id="b", attempt=1, output={"o": 2}),
        ExecutionCompleted.build(**common, seq=9, output_data={"b": {"o": 2}}),
        ExecutionCommandRejected.build(
            cause=cancel, **common, seq=10, command_type=cancel.type, reason="already completed"
        ),
    ]
    return [
        m.model_copy(update={"occurred_at": t0 + timedelta(seconds=i)}) for i, m in enumerate(built)
    ]


def execution_events(execution_id: str, i: int) -> list[Message]:
    """One execution's events as the orchestrator writes them (some fail, some complete)."""
    started = ExecutionStarted.build(
        execution_id=execution_id,
        seq=1,
        user_id=f"u{i % 7}",
        flow_id="f",
        flow_version="1",
        flow=FLOW,
        input_data={"i": i},
    )
    dispatched = NodeDispatched.build(
        cause=started,
        execution_id=execution_id,
        seq=2,
        node_id="a",
        attempt=1,
        agent_id="echo",
        task_id=f"{execution_id}/a/1",
        payload={"input": {"i": i}},
    )
    if i % 5 == 0:
        return [
            started,
            dispatched,
            NodeFailed.build(
                execution_id=execution_id,
                seq=3,
                node_id="a",
                attempt=1,
                agent_id="echo",
                error_message="boom",
            ),
            ExecutionFailed.build(
                execution_id=execution_id, seq=4, error_message="node 'a' failed: boom"
            ),
        ]
    return [
        started,
        dispatched,
        NodeCompleted.build(
            execution_id=execution_id,
            seq=3,
            node_id="a",
            attempt=1,
            agent_id="echo",
            output={"echo": i},
            duration_ms=1.5 * i,
        ),
        ExecutionCompleted.build(execution_id=execution_id, seq=4, output_data={"a": i}),
    ]


async def publish_raw(cfg: KafkaConfig, topic: str, items: Sequence[Raw]) -> list[RecordMetadata]:
    """Publish ``(key, message or raw bytes, headers)`` in order; return where each landed."""
    producer = make_producer(cfg)
    await producer.start()
    try:
        futures = []
        for key, value, headers in items:
            if isinstance(value, Message):
                hdrs = headers if headers is not None else headers_for(value)
                payload = to_bytes(value)
            else:
                hdrs, payload = headers or [], value
            futures.append(
                await producer.send(topic, value=payload, key=key.encode(), headers=hdrs)
            )
        return [await f for f in futures]
    finally:
        await producer.stop()


async def dead_letters(
    cfg: KafkaConfig,
    predicate: Callable[[DeadLetter], bool],
    count: int = 1,
    *,
    within: float = 20.0,
) -> list[DeadLetter]:
    """Wait until ``count`` dead letters match; return them."""
    async with TopicReader(cfg, cfg.topic(topics.DEADLETTER)) as reader:
        found = await reader.wait_for(
            lambda m: isinstance(m, DeadLetter) and predicate(m), count, within=within
        )
    return [m for m in found if isinstance(m, DeadLetter)]


def origin_of(meta: RecordMetadata) -> Callable[[DeadLetter], bool]:
    """A predicate: the dead letter of exactly the record at ``meta``."""

    def matches(letter: DeadLetter) -> bool:
        d = letter.data
        return (d.origin_topic, d.origin_partition, d.origin_offset) == (
            meta.topic,
            meta.partition,
            meta.offset,
        )

    return matches


# --- services in-process -----------------------------------------------------------------


def active_agent(agent_id: str) -> AgentRegistered:
    """An issued, registered and active agent's entry (its key: :func:`support.signer_of`)."""
    signer = signer_of(agent_id)
    return AgentRegistered.build(
        agent=AgentInfo(agent_id=agent_id),
        registered=True,
        active=True,
        reason="test",
        public_key=signer.public_key_b64,
        key_id=signer.key_id,
    )


def signed_result(cfg: KafkaConfig, result: AgentResult, signer_id: str | None = None) -> Raw:
    """``result`` as ``publish_raw`` takes it, signed by its agent (or ``signer_id``)."""
    topic = cfg.topic(topics.AGENT_RESULTS)
    signer = signer_of(signer_id or result.data.agent_id)
    return signed(cfg, topic, result.data.execution_id, result, signer)


@asynccontextmanager
async def orchestrator_loop(
    cfg: KafkaConfig, agents: Sequence[str] = ("ghost",), **options: Any
) -> AsyncIterator[TransactionalLoop]:
    """The orchestrator's transactional loop with its real handler, agents known active."""
    catalog = AgentCatalog()
    for agent_id in agents:
        catalog.apply(active_agent(agent_id))
    producer = make_producer(cfg)
    await producer.start()
    commands = cfg.topic(topics.EXECUTION_COMMANDS)

    async def fire(command: FireTimer, execution_id: str) -> None:
        await producer.send_and_wait(commands, to_bytes(command), key=execution_id.encode())

    async def reject_snapshot(record: Any, error: Exception) -> None:
        letter = dead_letter_outgoing(cfg, dead_letter(record, error, "orchestrator-recovery"))
        key, value, headers = letter.encode()
        await producer.send_and_wait(letter.topic, value, key=key, headers=headers)

    timers = TimerScheduler(fire)
    handler = OrchestratorHandler(
        cfg,
        catalog=catalog,
        timers=timers,
        evaluate_condition=evaluate_condition,
        dead_letter=reject_snapshot,
    )
    loop = TransactionalLoop(
        cfg,
        group_id=f"{cfg.prefix}orchestrator",
        input_topics=[commands, cfg.topic(topics.AGENT_RESULTS)],
        handler=handler,
        transactional_id_prefix=f"{cfg.prefix}orchestrator",
        consumer_name="orchestrator",
        **options,
    )
    ticking = asyncio.create_task(timers.run())
    try:
        async with loop:
            yield loop
    finally:
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)
        await producer.stop()


@asynccontextmanager
async def auth_loop(cfg: KafkaConfig, **options: Any) -> AsyncIterator[TransactionalLoop]:
    """Auth's transactional loop with its real handler."""
    handler = AuthHandler(cfg, partition_count=cfg.partitions)
    loop = TransactionalLoop(  # what spine_auth.app.make_loop builds, with test options
        cfg,
        group_id=f"{cfg.prefix}auth",
        input_topics=[cfg.topic(topics.AUTH_COMMANDS)],
        handler=handler,
        transactional_id_prefix=f"{cfg.prefix}auth",
        consumer_name="auth",
        **options,
    )
    async with loop:
        yield loop


@asynccontextmanager
async def registry_service(
    cfg: KafkaConfig, database_url: str, schema: str, **knobs: Any
) -> AsyncIterator[ServiceContext]:
    """The registry's ``main`` in this process, as ``serve`` would run it (``knobs``: more
    settings by their env names, e.g. ``SPINE_REGISTRY_HEARTBEAT_TTL``)."""
    settings = RegistrySettings(
        DATABASE_URL=database_url,
        KAFKA_BOOTSTRAP_SERVERS=cfg.bootstrap_servers,
        SPINE_REGISTRY_SCHEMA=schema,
        **knobs,
    )
    producer = make_producer(cfg)
    await producer.start()
    ctx = ServiceContext("registry", settings, cfg, producer, "registry-test", asyncio.Event())
    task = asyncio.create_task(registry_main(ctx))
    try:
        yield ctx
    finally:
        ctx.stopping.set()
        async with asyncio.timeout(30):
            await task
        await producer.stop()


def start_execution(execution_id: str, flow: FlowDefinition, **input_data: Any) -> StartExecution:
    return StartExecution.build(
        execution_id=execution_id,
        user_id="tester",
        flow=flow,
        flow_version=flow.content_hash(),
        input_data=input_data,
    )


def result_of(task: AgentMessage, **output: Any) -> AgentResult:
    d = task.data
    return AgentResult.build(
        cause=task,
        execution_id=d.execution_id,
        node_id=d.node_id,
        attempt=d.attempt,
        agent_id=d.to_agent,
        status="success",
        output=output,
    )


def key_hash(seed: str) -> str:
    return (uuid.uuid5(uuid.NAMESPACE_URL, seed).hex * 2)[:64]


def service_feed(now: datetime) -> list[tuple[topics.TopicSpec, str, Message]]:
    """A bit of everything every projection reads."""
    feed: list[tuple[topics.TopicSpec, str, Message]] = []
    for i in range(12):
        eid = f"ex-{i}"
        feed += [(topics.EXECUTION_EVENTS, eid, m) for m in execution_events(eid, i)]
    for i in range(4):
        user = f"user-{i}"
        feed += [
            (topics.AUTH_EVENTS, user, UserCreated.build(
                user_id=user, email=f"{user}@x.test", rate_limit=60,
                key_hash=key_hash(user), balance=10)),
            (topics.AUTH_EVENTS, user, CreditsAdded.build(user_id=user, amount=5, balance=15)),
            (topics.AUTH_EVENTS, user, CreditsReserved.build(
                user_id=user, execution_id=f"ex-{i}", amount=2, balance=13)),
            (topics.AUTH_EVENTS, user, CreditsSettled.build(
                user_id=user, execution_id=f"ex-{i}", outcome="completed", charged=2,
                refunded=0, balance=13)),
            (topics.AUTH_EVENTS, user, KeyRotated.build(
                user_id=user, key_hash=key_hash(f"{user}-2"), previous_key_hash=key_hash(user))),
            (topics.USAGE, user, UsageRecorded.build(
                user_id=user, request_id=f"r{i}", method="POST", path="/x", status_code=200,
                duration_ms=1.25 * i, credits=1)),
        ]  # fmt: skip
    for i in range(3):
        info = AgentInfo(agent_id=f"agent-{i}")
        feed += [
            (topics.REGISTRY_EVENTS, info.agent_id, AgentRegistered.build(
                agent=info, active=True, last_seen=now, reason="registered")),
            (topics.REGISTRY_EVENTS, info.agent_id, AgentStatusChanged.build(
                agent=info, active=False, last_seen=now, reason="no heartbeat")),
        ]  # fmt: skip
    flow = FlowDefinition(flow_id="f1", nodes=(FlowNode(id="a", agent_id="agent-0"),))
    feed += [
        (topics.FLOWS, "f1", FlowDefined.build(
            flow_id="f1", flow_version=flow.content_hash(), definition=flow, source="file")),
        (topics.FLOWS, "f2", FlowDefined.build(
            flow_id="f2", flow_version=flow.content_hash(), definition=flow, source="api")),
        (topics.FLOWS, "f2", FlowDeleted.build(flow_id="f2", source="api")),
        (topics.AUDIT, "f1", AuditRecorded.build(
            actor="master", subject="flow", subject_id="f1", action="flow.created",
            owner="system", detail={"source": "file"})),
        (topics.AUDIT, "f2", AuditRecorded.build(
            actor="key_0123456789abcdef", subject="flow", subject_id="f2",
            action="flow.refused", owner="u-1", detail={"reason": "taken"})),
    ]  # fmt: skip
    return feed
