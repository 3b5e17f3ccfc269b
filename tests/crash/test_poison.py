"""Poison on every topic a service consumes: the dead letter names the error and the origin,
and the next good message on the same partition is still handled.

Poison is every kind of bad record (``helpers.POISON``: not JSON, not an object, unknown
type, invalid body, unsupported version) plus a valid message of a type the topic does not
carry. Each batch of poison shares the good message's key, so it sits on the same
partition, in front of it.

| topic                      | consumer (dead letters)                                   |
|----------------------------|-----------------------------------------------------------|
| executions.commands        | orchestrator loop ("orchestrator")                        |
| agents.results             | orchestrator loop ("orchestrator")                        |
| executions.snapshots       | orchestrator state rebuild ("orchestrator-recovery")      |
| auth.commands              | auth loop ("auth")                                        |
| auth.events                | auth state rebuild skips it; auth's projector letters it  |
| executions.events, auth.events, registry.events, flows, usage | every projector of them |
| agents.<id>.tasks          | the relay; the SDK only logs and counts it (no rights on it) |
| registry.commands, .requests, .heartbeats | registry ("registry")                     |
| gateway.replies            | the gateway replica addressed ("gw-replies")              |
| services.heartbeats        | every gateway ("gw-heartbeats", one message_id)           |
| metrics.summary            | every gateway ("gw-metrics-summary", one message_id)      |
| registry.events, flows ... for in-memory views (orchestrator catalogue and flow loader,
  relay, metrics): logged and skipped, the projector of the topic dead-letters it       |
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import asyncpg
import pytest
from aiokafka.structs import RecordMetadata
from spine_agent import Agent, Task
from spine_agent.testing import TopicReader, publish, publish_tasks, task_message, wait_caught_up
from spine_auth.projector import auth_projection
from spine_contracts import (
    AgentInfo,
    AgentMessage,
    AgentRegistered,
    AgentResult,
    CreateUser,
    DeadLetter,
    ExecutionCompleted,
    ExecutionFailed,
    FlowDefinition,
    FlowNode,
    GatewayReply,
    Message,
    MetricsSummaryUpdated,
    NodeConfig,
    NodeDispatched,
    RegisterAgent,
    ServiceHeartbeat,
    UserCreated,
    topics,
    utcnow,
)
from spine_contracts.topics import TopicSpec
from spine_gateway.adapters.kafka import Heartbeats, MetricsSummary, Replies
from spine_gateway.projection import rebuild_projections as gateway_projections
from spine_orchestrator.catalog import AgentCatalog
from spine_orchestrator.projection import PROJECTION as ORCHESTRATOR_PROJECTION
from spine_registry.projection import PROJECTION as REGISTRY_PROJECTION
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import REPLY_TO_HEADER, KafkaConfig
from spine_servicekit.postgres import drop_schema
from spine_servicekit.projector import Projector
from support import fresh_topics, issue_agent, read_to_end, signed, signer_of

from .helpers import (
    POISON,
    Raw,
    auth_loop,
    dead_letters,
    key_hash,
    orchestrator_loop,
    publish_raw,
    registry_service,
    result_of,
    service_feed,
    signed_result,
    start_execution,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

GHOST_FLOW = FlowDefinition(flow_id="g", nodes=(FlowNode(id="a", agent_id="ghost"),))
#: A valid message of a type that no consumed topic carries.
MISROUTED = DeadLetter.build(
    origin_topic="elsewhere", origin_partition=0, origin_offset=0, payload_b64="",
    error_type="E", error="e", consumer="c", failed_at=utcnow(),
)  # fmt: skip


def poison(key: str, headers: list[tuple[str, bytes]] | None = None) -> list[Raw]:
    return [(key, raw, headers) for raw in POISON.values()] + [(key, MISROUTED, headers)]


async def assert_dead_lettered(
    cfg: KafkaConfig, metas: Sequence[RecordMetadata], consumer: str
) -> None:
    """Every record at ``metas`` has a dead letter by ``consumer``, with error and origin."""
    wanted = {(m.topic, m.partition, m.offset) for m in metas}
    letters = await dead_letters(
        cfg,
        lambda d: (
            d.data.consumer == consumer
            and (d.data.origin_topic, d.data.origin_partition, d.data.origin_offset) in wanted
        ),
        len(wanted),
    )
    found = {(d.data.origin_topic, d.data.origin_partition, d.data.origin_offset) for d in letters}
    assert found == wanted
    kinds = {d.data.error_type for d in letters}
    assert kinds >= {"UndecodableMessage", "UnknownMessageType", "InvalidMessage"}, kinds
    assert all(d.data.error and d.data.payload_b64 is not None for d in letters)


async def first(cfg: KafkaConfig, topic: str, cls: type[Message], **where: object) -> Message:
    async with TopicReader(cfg, topic) as reader:
        [found, *_] = await reader.wait_for(
            lambda m: isinstance(m, cls) and all(getattr(m.data, k) == v for k, v in where.items()),
            within=30,
        )
    return found


# --- the transactional loops ---------------------------------------------------------------


async def test_orchestrator_inputs_and_snapshots(kafka: KafkaConfig) -> None:
    cfg = await fresh_topics(kafka, agents=["ghost"])
    eid = f"px-{uuid.uuid4().hex[:6]}"
    snapshots = await publish_raw(
        cfg, cfg.topic(topics.EXECUTION_SNAPSHOTS), [(eid, b"\x00 not a snapshot", None)]
    )
    commands, results = cfg.topic(topics.EXECUTION_COMMANDS), cfg.topic(topics.AGENT_RESULTS)
    async with orchestrator_loop(cfg):
        bad_commands = await publish_raw(cfg, commands, poison(eid))
        await publish(cfg, commands, [(eid, start_execution(eid, GHOST_FLOW))])
        task = await first(cfg, cfg.agent_tasks("ghost"), AgentMessage, execution_id=eid)
        bad_results = await publish_raw(cfg, results, poison(eid))
        result = result_of(task, ok=True)  # type: ignore[arg-type]
        await publish_raw(cfg, results, [signed_result(cfg, result)])
        await first(cfg, cfg.topic(topics.EXECUTION_EVENTS), ExecutionCompleted, execution_id=eid)
    await assert_dead_lettered(cfg, [*bad_commands, *bad_results], "orchestrator")
    # Each state rebuild that meets it sends it again, under the same message_id.
    letters = await dead_letters(cfg, lambda d: d.data.consumer == "orchestrator-recovery")
    assert {(d.message_id, d.data.origin_offset) for d in letters} == {
        (letters[0].message_id, snapshots[0].offset)
    }


async def test_auth_commands_and_its_event_history(
    kafka: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    cfg = await fresh_topics(kafka)
    user = f"pu-{uuid.uuid4().hex[:6]}"
    events = cfg.topic(topics.AUTH_EVENTS)
    bad_events = await publish_raw(cfg, events, poison(user))
    commands = cfg.topic(topics.AUTH_COMMANDS)
    async with auth_loop(cfg):  # the partition's state rebuild meets the bad events first
        bad_commands = await publish_raw(cfg, commands, poison(user))
        create = CreateUser.build(
            user_id=user, email=f"{user}@x.test", credits=3, key_hash=key_hash(user)
        )
        await publish(cfg, commands, [(user, create)])
        await first(cfg, events, UserCreated, user_id=user)
    await assert_dead_lettered(cfg, bad_commands, "auth")
    async with Projector(cfg, database_url, auth_projection(), schema=pg_schema) as projector:
        async with asyncio.timeout(20):
            await projector.wait_until_caught_up()
        assert projector.stats.applied == 1
    await assert_dead_lettered(cfg, bad_events, projector.name)


# --- projectors ----------------------------------------------------------------------------


async def test_every_projector_on_every_projected_topic(
    kafka: KafkaConfig, database_url: str
) -> None:
    cfg = await fresh_topics(kafka)
    feed = service_feed(utcnow())
    specs: list[TopicSpec] = sorted({s for s, _, _ in feed}, key=lambda s: s.base)
    bad: dict[str, list[RecordMetadata]] = {}
    for spec in specs:  # the poison first, then the good records, on the same keys
        good = [(k, m, None) for s, k, m in feed if s == spec]
        bad[cfg.topic(spec)] = await publish_raw(cfg, cfg.topic(spec), poison(good[0][0]))
        await publish_raw(cfg, cfg.topic(spec), good)
    tag = uuid.uuid4().hex[:8]
    runs = {
        f"pz_{tag}_gateway": gateway_projections(),
        f"pz_{tag}_orchestrator": (ORCHESTRATOR_PROJECTION,),
        f"pz_{tag}_registry": (REGISTRY_PROJECTION,),
        f"pz_{tag}_auth": (auth_projection(),),
    }
    projectors = [
        Projector(cfg, database_url, p, schema=schema)
        for schema, projections in runs.items()
        for p in projections
    ]
    try:
        for projector in projectors:
            await projector.start()
        async with asyncio.timeout(30):
            for projector in projectors:
                await projector.wait_until_caught_up()
        for projector in projectors:
            assert projector.failure is None
            assert projector.stats.applied > 0, projector.name
            assert projector.stats.dead_letters == 6 * len(projector.topic_names)
            metas = [m for t in projector.topic_names for m in bad[t]]
            await assert_dead_lettered(cfg, metas, projector.name)
    finally:
        for projector in projectors:
            await projector.stop()
        conn = await asyncpg.connect(database_url)
        try:
            for schema in runs:
                await drop_schema(conn, schema)
        finally:
            await conn.close()


# --- agents --------------------------------------------------------------------------------


async def test_an_agents_tasks_topic(kafka: KafkaConfig) -> None:
    cfg = await fresh_topics(kafka, [topics.AGENT_RESULTS, topics.DEADLETTER], agents=["sdkp"])
    agent = Agent(
        AgentInfo(agent_id="sdkp"), signer=signer_of("sdkp"), concurrency=2, announce=False
    )

    @agent.handler
    async def handle(task: Task) -> dict[str, object]:
        return {"echo": task.input}

    eid = "pt-1"
    stopping = asyncio.Event()
    serving = asyncio.create_task(agent.serve(cfg, stopping))
    try:
        bad = await publish_raw(cfg, cfg.agent_tasks("sdkp"), poison(eid))
        await publish_tasks(cfg, "sdkp", task_message("sdkp", execution_id=eid, input={"x": 1}))
        result = await first(cfg, cfg.topic(topics.AGENT_RESULTS), AgentResult, execution_id=eid)
    finally:
        stopping.set()
        await serving
    assert result.data.output == {"echo": {"x": 1}}  # type: ignore[attr-defined]
    # on the secured broker an agent may not write dead letters (a forged one would wait
    # to be replayed): each poison record is logged, counted and committed past
    assert cfg.security.sasl
    assert agent.stats.dead_letters == len(bad)
    await wait_caught_up(cfg, agent.group_id(cfg), cfg.agent_tasks("sdkp"))


async def test_an_agent_that_throws_is_retried_then_fails_and_never_stalls(
    kafka: KafkaConfig,
) -> None:
    """An agent that throws goes through the node's retries, then the node fails; the
    executions behind it on the same partitions all finish."""
    cfg = await fresh_topics(kafka, agents=["thrower"])
    agent = Agent(
        AgentInfo(agent_id="thrower"), signer=signer_of("thrower"), concurrency=4, announce=False
    )

    @agent.handler
    async def handle(task: Task) -> dict[str, object]:
        if task.input.get("fail"):
            raise RuntimeError(f"thrower refuses {task.execution_id}")
        return {"ok": task.attempt}

    node = FlowNode(id="t", agent_id="thrower", config=NodeConfig(retries=1, retry_backoff=0.05))
    flow = FlowDefinition(flow_id="throws", nodes=(node,))
    ids = [f"th-{i:02d}" for i in range(12)]
    stopping = asyncio.Event()
    serving = asyncio.create_task(agent.serve(cfg, stopping))
    events = cfg.topic(topics.EXECUTION_EVENTS)
    try:
        async with orchestrator_loop(cfg, agents=["thrower"]):
            starts = [(e, start_execution(e, flow, fail=i % 3 == 0)) for i, e in enumerate(ids)]
            await publish(cfg, cfg.topic(topics.EXECUTION_COMMANDS), starts)
            async with TopicReader(cfg, events) as reader:
                await reader.wait_for(
                    lambda m: isinstance(m, ExecutionCompleted | ExecutionFailed), 12, within=60
                )
    finally:
        stopping.set()
        await serving
    log = await read_to_end(cfg, events)  # counted to the end: a late duplicate shows
    done = [m for m in log if isinstance(m, ExecutionCompleted | ExecutionFailed)]
    dispatched = [m for m in log if isinstance(m, NodeDispatched)]
    assert len(done) == len(ids), done
    outcome = {m.data.execution_id: type(m).__name__ for m in done}  # type: ignore[attr-defined]
    assert outcome == {
        e: "ExecutionFailed" if i % 3 == 0 else "ExecutionCompleted" for i, e in enumerate(ids)
    }
    attempts = {}
    for m in dispatched:
        attempts.setdefault(m.data.execution_id, []).append(m.data.attempt)  # type: ignore[attr-defined]
    assert all(attempts[e] == ([1, 2] if i % 3 == 0 else [1]) for i, e in enumerate(ids))
    failed = [m for m in done if isinstance(m, ExecutionFailed)]
    assert all("thrower refuses" in m.data.error_message for m in failed)  # type: ignore[attr-defined]
    assert agent.stats.failed == 8 and agent.stats.succeeded == 8


# --- the registry --------------------------------------------------------------------------


async def test_registry_commands_and_heartbeats(
    kafka: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    cfg = await fresh_topics(kafka)
    agent_id = "pr-agent"
    await issue_agent(cfg, agent_id)
    commands = cfg.topic(topics.REGISTRY_COMMANDS)
    async with registry_service(cfg, database_url, pg_schema):
        bad = await publish_raw(cfg, commands, poison(agent_id))
        bad += await publish_raw(cfg, cfg.topic(topics.REGISTRY_HEARTBEATS), poison(agent_id))
        bad += await publish_raw(cfg, cfg.topic(topics.REGISTRY_ADMIN), poison(agent_id))
        register = RegisterAgent.build(agent=AgentInfo(agent_id=agent_id))
        await publish_raw(
            cfg, commands, [signed(cfg, commands, agent_id, register, signer_of(agent_id))]
        )
        entry = await first(cfg, cfg.topic(topics.REGISTRY_EVENTS), AgentRegistered)
    assert entry.causation_id == str(register.message_id)
    await assert_dead_lettered(cfg, bad, "registry")


# --- followers -----------------------------------------------------------------------------


async def test_topics_only_gateways_follow(kafka: KafkaConfig) -> None:
    cfg = await fresh_topics(
        kafka,
        [topics.GATEWAY_REPLIES, topics.SERVICE_HEARTBEATS, topics.METRICS_SUMMARY,
         topics.DEADLETTER],
    )  # fmt: skip
    # Beats and the summary are followed from the beginning: on the log before the start.
    beat = ServiceHeartbeat.build(service="s", instance_id="s-1", started_at=utcnow())
    bad_beats = await publish_raw(cfg, cfg.topic(topics.SERVICE_HEARTBEATS), poison("s-1"))
    await publish(cfg, cfg.topic(topics.SERVICE_HEARTBEATS), [("s-1", beat)])
    metric = MetricsSummaryUpdated.build(metric="executions_total", value=3.0)
    bad_metrics = await publish_raw(
        cfg, cfg.topic(topics.METRICS_SUMMARY), poison("executions_total")
    )
    await publish(cfg, cfg.topic(topics.METRICS_SUMMARY), [("executions_total", metric)])
    replies, beats, summary = Replies(cfg, "gw-p"), Heartbeats(cfg), MetricsSummary(cfg)
    for view in (replies, beats, summary):
        await view.start()
    try:
        for view in (beats, summary):
            await view._follower.wait_caught_up(20)
        # Replies are followed from the end: published now, in front of the awaited one.
        waiting = replies.expect("rq")
        to_me = [(REPLY_TO_HEADER, b"gw-p")]
        reply_topic = cfg.topic(topics.GATEWAY_REPLIES)
        bad = await publish_raw(cfg, reply_topic, poison("gw-p", to_me))
        not_mine = await publish_raw(
            cfg, reply_topic, [("gw-p", b"junk", [(REPLY_TO_HEADER, b"gw-other")])]
        )
        ok = GatewayReply.build(request_id="rq", ok=True)
        await publish_raw(cfg, reply_topic, [("gw-p", ok, to_me)])
        async with asyncio.timeout(20):
            assert (await waiting).message_id == ok.message_id
        await assert_dead_lettered(cfg, bad, "gw-replies")
        await assert_dead_lettered(cfg, bad_beats, "gw-heartbeats")
        await assert_dead_lettered(cfg, bad_metrics, "gw-metrics-summary")
        assert "s-1" in beats.last and summary.value("executions_total") == 3.0
        # Poison addressed to another replica is that replica's to dead-letter.
        assert replies._follower.stats.poison == len(bad) + len(not_mine)
        assert replies._follower.stats.dead_letters == len(bad)
    finally:
        for view in (replies, beats, summary):
            await view.stop()


async def test_pure_views_skip_poison_and_go_on(kafka: KafkaConfig) -> None:
    """The orchestrator's catalogue (like the relay's, the flow loader and metrics) is a
    view of a topic whose projector dead-letters: it logs, skips and applies the rest;
    a view whose own code raises on a record goes on too."""
    cfg = await fresh_topics(kafka, [topics.REGISTRY_EVENTS, topics.DEADLETTER])
    topic = cfg.topic(topics.REGISTRY_EVENTS)
    await publish_raw(cfg, topic, poison("pv-agent"))
    registered = AgentRegistered.build(
        agent=AgentInfo(agent_id="pv-agent"), active=True, reason="test"
    )
    await publish(cfg, topic, [("pv-agent", registered)])
    catalog = AgentCatalog()
    reached = asyncio.Event()

    def boom(_m: Message, _r: object) -> None:
        reached.set()
        raise ValueError("a view that cannot take this entry")

    def fold(m: Message, _r: object) -> None:
        catalog.apply(m)  # (what it returns, an agent to wake, is the orchestrator's concern)

    view = TopicFollower(cfg, topic, fold, name="catalogue")
    broken = TopicFollower(cfg, topic, boom, name="broken-view")
    for follower in (view, broken):
        await follower.start()
    try:
        for follower in (view, broken):
            await follower.wait_caught_up(20)
    finally:
        for follower in (view, broken):
            await follower.stop()
    assert catalog.availability("pv-agent") == "active"
    assert view.stats.poison == 6 and view.stats.dead_letters == 0
    assert reached.is_set() and broken.stats.poison == 7 and broken.stats.applied == 0
