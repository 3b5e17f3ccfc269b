"""One test per sentence of ``docs/guarantees.md`` (G1 ... G13), on the real components.

Each docstring quotes the guarantee it checks. Services run in this process with their
real handlers and loops (``helpers``), on real Kafka and PostgreSQL, each test on topics
of its own; the process-level kill -9 versions live next to the code they test
(``tests/servicekit/test_txloop.py``, ``test_projector.py``, ``tests/e2e``).

Every count is taken from a topic read to its end (``support.read_to_end``: the last stable
offset, read_committed), never from a reader that stops at the expected number, so a
duplicate arriving in a later fetch fails the test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import orjson
import pytest
from aiokafka.errors import KafkaConnectionError
from spine_agent import Agent, Task
from spine_agent.testing import (
    publish,
    publish_tasks,
    task_message,
    wait_caught_up,
)
from spine_contracts import (
    AddCredits,
    AgentDeregistered,
    AgentHeartbeat,
    AgentInfo,
    AgentMessage,
    AgentRegistered,
    AgentResult,
    AgentStatusChanged,
    CreateUser,
    CreditsAdded,
    CreditsSettled,
    DeadLetter,
    DeregisterAgent,
    ExecutionCompleted,
    FlowDefinition,
    FlowNode,
    GatewayReply,
    Message,
    RegisterAgent,
    ServiceHeartbeat,
    UsageRecorded,
    UserCreated,
    topics,
    utcnow,
)
from spine_gateway.adapters.kafka import Heartbeats, Replies, UsageRecorder
from spine_gateway.projection import usage_projection
from spine_metrics.aggregates import Aggregates
from spine_registry.domain import Catalog
from spine_registry.relay.delivery import RetryPolicy, deliver
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import (
    REPLY_TO_HEADER,
    KafkaConfig,
    dead_letter,
    dead_letter_id,
    make_producer,
)
from spine_servicekit.postgres import drop_schema
from spine_servicekit.projector import Incoming, Projection, Projector
from spine_servicekit.rebuild import TARGETS, rebuild_schema
from support import fresh_topics, read_to_end, signer_of

from .helpers import (
    auth_loop,
    dead_letters,
    execution_events,
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


def of(messages: Sequence[Message], cls: type[Message]) -> list[Message]:
    return [m for m in messages if isinstance(m, cls)]


# --- G1: the transactional loop ------------------------------------------------------------


async def test_g1_a_decision_and_its_offset_commit_together(kafka: KafkaConfig) -> None:
    """G1: "Each input of the orchestrator and of auth is decided once: the outputs it
    causes and its input offset commit in one Kafka transaction; a transaction that fails
    before its commit leaves nothing a read_committed reader sees, and the input is decided
    again." (The kill -9 version: tests/servicekit/test_txloop.py.)"""
    cfg = await fresh_topics(kafka)
    crashes = 2

    def crashing_producer(txid: str) -> object:
        producer = make_producer(cfg, transactional_id=txid)
        commit = producer.commit_transaction

        async def commit_or_crash() -> None:
            nonlocal crashes
            if crashes > 0:  # everything is sent; the commit is what never happens
                crashes -= 1
                raise KafkaConnectionError("simulated crash before the commit")
            await commit()

        producer.commit_transaction = commit_or_crash  # type: ignore[method-assign]
        return producer

    user = "g1-user"
    adds = [AddCredits.build(user_id=user, credits=i + 1) for i in range(20)]
    create = CreateUser.build(user_id=user, email="g1@x.test", credits=5, key_hash=key_hash(user))
    commands = [(user, create), *((user, a) for a in adds)]
    await publish(cfg, cfg.topic(topics.AUTH_COMMANDS), commands)
    async with auth_loop(cfg, producer_factory=crashing_producer, max_batch=5) as loop:
        await read_to_end(cfg, topics.AUTH_EVENTS, at_least=21)
        await wait_caught_up(cfg, f"{cfg.prefix}auth", cfg.topic(topics.AUTH_COMMANDS))
        assert loop.stats.failed == 2 and crashes == 0
    events = await read_to_end(cfg, topics.AUTH_EVENTS)
    added = of(events, CreditsAdded)
    assert len(of(events, UserCreated)) == 1 and len(added) == 20
    assert sorted(m.causation_id for m in added) == sorted(str(a.message_id) for a in adds)
    assert added[-1].data.balance == 5 + sum(range(1, 21))  # type: ignore[attr-defined]
    # The failed transactions did write their records: aborted, invisible to readers.
    raw = await read_to_end(cfg, topics.AUTH_EVENTS, isolation="read_uncommitted")
    assert len(raw) > 21


# --- G2, G3: duplicates on the loops, one task per attempt ---------------------------------


async def test_g2_auth_changes_a_balance_once_per_command(kafka: KafkaConfig) -> None:
    """G2: "A command delivered twice — the same message_id published again, or replayed
    after a crash — is recognised by the state it acts on and changes nothing: auth
    remembers the ids of the commands it handled, in the accounts it rebuilds from its
    events." """
    cfg = await fresh_topics(kafka)
    user = "g2-user"
    create = CreateUser.build(user_id=user, email="g2@x.test", credits=1, key_hash=key_hash(user))
    add = AddCredits.build(user_id=user, credits=10)
    commands = cfg.topic(topics.AUTH_COMMANDS)
    await publish(cfg, commands, [(user, create), (user, add), (user, add)])
    async with auth_loop(cfg):
        await wait_caught_up(cfg, f"{cfg.prefix}auth", commands)
    # A new life of the loop rebuilds the account from the events: still a duplicate.
    await publish(cfg, commands, [(user, add), (user, AddCredits.build(user_id=user, credits=3))])
    async with auth_loop(cfg):
        await read_to_end(cfg, topics.AUTH_EVENTS, at_least=3)
        await wait_caught_up(cfg, f"{cfg.prefix}auth", commands)
    events = await read_to_end(cfg, topics.AUTH_EVENTS)
    balances = [m.data.balance for m in of(events, CreditsAdded)]  # type: ignore[attr-defined]
    assert balances == [11, 14]


async def test_g2_g3_the_orchestrator_takes_one_result_and_dispatches_once(
    kafka: KafkaConfig,
) -> None:
    """G2: "... the orchestrator accepts one result per (execution, node, attempt): a
    duplicate or late one changes nothing."
    G3: "A task for (execution_id, node_id, attempt) is dispatched once: it is an output
    of the decision that scheduled the node, in that decision's transaction." """
    cfg = await fresh_topics(kafka, agents=["ghost"])
    eid = "g2-exec"
    start = start_execution(eid, GHOST_FLOW, x=1)
    commands = cfg.topic(topics.EXECUTION_COMMANDS)
    results = cfg.topic(topics.AGENT_RESULTS)
    async with orchestrator_loop(cfg):
        await publish(cfg, commands, [(eid, start), (eid, start)])
        [task] = of(await read_to_end(cfg, cfg.agent_tasks("ghost"), at_least=1), AgentMessage)
        result = result_of(task, answer=42)  # type: ignore[arg-type]
        await publish_raw(cfg, results, [signed_result(cfg, result)] * 2)
        await read_to_end(cfg, topics.EXECUTION_EVENTS, at_least=4)
        await publish_raw(cfg, results, [signed_result(cfg, result)])  # late, after the end
        await wait_caught_up(cfg, f"{cfg.prefix}orchestrator", results)
        await wait_caught_up(cfg, f"{cfg.prefix}orchestrator", commands)
    events = await read_to_end(cfg, topics.EXECUTION_EVENTS)
    counts = Counter(type(m).__name__ for m in events if getattr(m.data, "execution_id", "") == eid)
    assert counts["ExecutionStarted"] == counts["NodeDispatched"] == 1
    assert counts["NodeCompleted"] == counts["ExecutionCompleted"] == 1
    [done] = of(events, ExecutionCompleted)
    assert done.data.output_data == {"a": {"answer": 42}}  # type: ignore[attr-defined]
    tasks = of(await read_to_end(cfg, cfg.agent_tasks("ghost")), AgentMessage)
    assert [t.data.idempotency_key for t in tasks] == [f"{eid}:a:1"]  # type: ignore[attr-defined]


# --- G4, G5: agents at least once, with an idempotency key -------------------------------


async def test_g4_an_uncommitted_task_runs_again_with_the_same_key(kafka: KafkaConfig) -> None:
    """G4: "Agents run tasks at least once: a task whose offset was not committed when its
    agent stopped or died runs again on the next owner, with the same idempotency key
    (execution_id, node_id, attempt) — task.idempotency_key; within one process, a
    redelivered task is not run twice." """
    cfg = await fresh_topics(kafka, [topics.AGENT_RESULTS, topics.DEADLETTER], agents=["alo"])
    runs: list[tuple[int, str]] = []
    started = asyncio.Event()

    def make(life: int, block: bool) -> Agent:
        agent = Agent(
            AgentInfo(agent_id="alo"),
            signer=signer_of("alo"),
            concurrency=4,
            drain_timeout=0.2,
            announce=False,
        )

        @agent.handler
        async def handle(task: Task) -> dict[str, object]:
            runs.append((life, task.idempotency_key))
            if block:
                started.set()
                await asyncio.Event().wait()  # dies with the process, before answering
            return {"life": life}

        return agent

    task = task_message("alo", execution_id="g4-exec", node_id="n", attempt=3)
    await publish_tasks(cfg, "alo", task)
    first = make(1, block=True)
    stopping = asyncio.Event()
    serving = asyncio.create_task(first.serve(cfg, stopping))
    async with asyncio.timeout(30):
        await started.wait()
    await publish_tasks(cfg, "alo", task)  # the same task again, while it runs: not twice
    stopping.set()  # gives up the running handler after drain_timeout, commits nothing
    await serving
    assert first.stats.duplicates == 1
    second = make(2, block=False)
    stopping = asyncio.Event()
    serving = asyncio.create_task(second.serve(cfg, stopping))
    try:
        await read_to_end(cfg, topics.AGENT_RESULTS, at_least=1)
    finally:
        stopping.set()
        await serving
    [result] = of(await read_to_end(cfg, topics.AGENT_RESULTS), AgentResult)
    assert runs[0] == (1, "g4-exec:n:3") and (2, "g4-exec:n:3") in runs
    assert result.data.output == {"life": 2}  # type: ignore[attr-defined]
    assert result.causation_id == str(task.message_id)


async def test_g5_the_relay_gives_http_agents_the_same_key_on_every_call() -> None:
    """G5: "The relay hands that key to an HTTP agent on every call and retry, as the
    Idempotency-Key header and as input.context.idempotency_key." """
    calls: list[httpx.Request] = []

    async def agent(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(503, text="busy")
        body = {"status": "success", "output": {"message": "ok"}, "execution_id": "g5"}
        return httpx.Response(200, json=body)

    task = Task.from_message(
        task_message("echo-http", execution_id="g5", node_id="n", attempt=2,
                     deadline=datetime.now(UTC) + timedelta(seconds=30))
    )  # fmt: skip
    policy = RetryPolicy(max_retries=2, backoff_s=0.01, max_backoff_s=0.01)
    async with httpx.AsyncClient(transport=httpx.MockTransport(agent)) as client:

        async def no_sleep(_s: float) -> None:
            return None

        await deliver(client, "http://agent.test", task, policy, sleep=no_sleep)
    assert len(calls) == 2
    for call in calls:
        assert call.headers["idempotency-key"] == "g5:n:2" == task.idempotency_key
        assert orjson.loads(call.content)["input"]["context"]["idempotency_key"] == "g5:n:2"


# --- G6, G7: projections -------------------------------------------------------------------

_COUNTED = """CREATE TABLE counted (execution_id text PRIMARY KEY, events int NOT NULL)"""


async def _count(conn: asyncpg.Connection, batch: Sequence[Incoming]) -> None:
    for item in batch:  # not idempotent on purpose: a message applied twice shows
        await conn.execute(
            "INSERT INTO counted VALUES ($1, 1) ON CONFLICT (execution_id)"
            " DO UPDATE SET events = counted.events + 1",
            item.message.data.execution_id,  # type: ignore[attr-defined]
        )


COUNTING = Projection("counting", (topics.EXECUTION_EVENTS,), _count, migrations=(_COUNTED,))


async def test_g6_a_message_published_twice_is_projected_once(
    kafka: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    """G6: "A projector applies every record once: its rows, the ids of the messages it
    applied and its offsets commit in one PostgreSQL transaction, so a message published
    twice (one message_id at two offsets) is applied once, also across a restart." """
    cfg = await fresh_topics(kafka, [topics.EXECUTION_EVENTS, topics.DEADLETTER])
    topic = cfg.topic(topics.EXECUTION_EVENTS)
    one, two, three = (execution_events(f"e{i}", 1)[0] for i in range(3))
    await publish_raw(cfg, topic, [("e0", one, None), ("e1", two, None), ("e0", one, None)])
    async with Projector(cfg, database_url, COUNTING, schema=pg_schema) as projector:
        async with asyncio.timeout(20):
            await projector.wait_until_caught_up()
        assert projector.stats.duplicates == 1
    await publish_raw(cfg, topic, [("e1", two, None), ("e2", three, None), ("e0", one, None)])
    async with Projector(cfg, database_url, COUNTING, schema=pg_schema) as projector:
        async with asyncio.timeout(20):
            await projector.wait_until_caught_up()
        assert projector.stats.duplicates == 2 and projector.stats.applied == 1
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(f'SELECT * FROM "{pg_schema}".counted ORDER BY 1')
    finally:
        await conn.close()
    assert [(r["execution_id"], r["events"]) for r in rows] == [("e0", 1), ("e1", 1), ("e2", 1)]


async def test_g7_every_services_projection_equals_its_rebuild(
    kafka: KafkaConfig, database_url: str
) -> None:
    """G7: "Every projection equals its rebuild from offset 0, row for row: every column
    is derived from the events; make rebuild checks it and swaps only an equal copy."
    (Under load and with the swap: tests/crash/test_rebuild.py.)"""
    cfg = await fresh_topics(kafka)
    feed = service_feed(utcnow())
    for spec in {s for s, _, _ in feed}:
        await publish_raw(cfg, cfg.topic(spec), [(k, m, None) for s, k, m in feed if s == spec])
    tag = uuid.uuid4().hex[:8]
    conn = await asyncpg.connect(database_url)
    try:
        for name, target in TARGETS.items():
            schema = f"g7_{tag}_{name}"
            projectors = [
                Projector(cfg, database_url, p, schema=schema) for p in target.load_projections()
            ]
            try:
                for projector in projectors:
                    await projector.start()
                async with asyncio.timeout(30):
                    for projector in projectors:
                        await projector.wait_until_caught_up()
                report = await rebuild_schema(cfg, database_url, schema, target.load_projections(),
                                              swap=False)  # fmt: skip
            finally:
                for projector in projectors:
                    await projector.stop()
                await drop_schema(conn, schema)
            assert report.equal, report.summary()
            assert all(t.live_rows for t in report.tables), report.summary()
            assert report.carried == (["gw_usage"] if name == "gateway" else [])
    finally:
        await conn.close()


# --- G8, G9: the registry ------------------------------------------------------------------


async def test_g8_a_registry_command_changes_the_catalogue_once(
    kafka: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    """G8: "The registry handles a command once: a command read again after a crash, or
    published twice, is recognised by its message_id among the causes of the catalogue
    entries — which outlive a restart on the compacted topic — and changes nothing." """
    cfg = await fresh_topics(kafka)
    info = AgentInfo(agent_id="g8-agent", transport="http", endpoint="http://g8.test")
    register = RegisterAgent.build(agent=info, owner="system")  # as the admin's gateway sends it
    deregister = DeregisterAgent.build(agent_id=info.agent_id)
    commands = cfg.topic(topics.REGISTRY_REQUESTS)
    async with registry_service(cfg, database_url, pg_schema):
        await publish(cfg, commands, [(info.agent_id, register), (info.agent_id, deregister)])
        await read_to_end(cfg, topics.REGISTRY_EVENTS, at_least=2)
        await publish(cfg, commands, [(info.agent_id, register)])  # the same message again
        await wait_caught_up(cfg, f"{cfg.prefix}registry", commands)
    async with registry_service(cfg, database_url, pg_schema):  # a new life: from the log
        await publish(cfg, commands, [(info.agent_id, register)])
        await wait_caught_up(cfg, f"{cfg.prefix}registry", commands)
    entries = await read_to_end(cfg, topics.REGISTRY_EVENTS)
    assert [type(m) for m in entries] == [AgentRegistered, AgentDeregistered]


async def test_g9_beats_only_record_liveness(kafka: KafkaConfig) -> None:
    """G9: "Heartbeats are best effort: nothing retries or deduplicates them; a beat only
    records liveness — the registry changes an agent's entry only when ready changes (or with
    the first beat after a registration), the gateway keeps the last beat per service
    instance — so a beat doubled or replayed changes nothing, and a lost one shows as inactive
    once the TTL has passed. Only beats make an agent active: a registration waits for its
    first, and an HTTP agent's probe counts only for the endpoint it is registered at when the
    beat arrives." """
    catalog = Catalog()
    t0 = utcnow()
    endpoint = "https://b.example/"
    [registered] = catalog.decide(
        RegisterAgent.build(agent=AgentInfo(agent_id="b", transport="http", endpoint=endpoint)),
        t0,
    )
    assert not registered.data.active
    elsewhere = AgentHeartbeat.build(
        agent_id="b", instance_id="i1", transport="http", ready=True, endpoint="https://c.example/"
    )
    assert catalog.decide(elsewhere, t0) == []  # a probe of another endpoint
    ready = AgentHeartbeat.build(
        agent_id="b", instance_id="i1", transport="http", ready=True, endpoint=endpoint
    )
    assert [type(e) for e in catalog.decide(ready, t0)] == [AgentStatusChanged]
    assert catalog.decide(ready, t0) == [] and catalog.decide(ready, t0) == []  # doubled
    ttl = timedelta(seconds=15)
    assert catalog.sweep(t0 + timedelta(seconds=10), ttl) == []
    [gone] = catalog.sweep(t0 + timedelta(seconds=16), ttl)
    assert not gone.data.active and "no heartbeat" in (gone.data.reason or "")

    cfg = await fresh_topics(kafka, [topics.SERVICE_HEARTBEATS, topics.DEADLETTER])
    beat = ServiceHeartbeat.build(service="auth", instance_id="auth-1", started_at=t0)
    later = ServiceHeartbeat.build(service="auth", instance_id="auth-1", started_at=t0)
    await publish(cfg, cfg.topic(topics.SERVICE_HEARTBEATS),
                  [("auth-1", beat), ("auth-1", beat), ("auth-1", later)])  # fmt: skip
    heartbeats = Heartbeats(cfg)
    await heartbeats.start()
    try:
        await heartbeats._follower.wait_caught_up(20)
    finally:
        await heartbeats.stop()
    assert list(heartbeats.last) == ["auth-1"]
    assert heartbeats.last["auth-1"][0].message_id == later.message_id


# --- G10, G11, G12 -------------------------------------------------------------------------


async def test_g10_metrics_count_a_message_once_and_recompute_after_a_restart() -> None:
    """G10: "Metrics count each message once (the last 200 000 message ids are
    remembered); the aggregates live in memory, and a restarted metrics service folds its
    topics from offset 0 again, so its summary after a restart equals the one before." """
    log = [m for i in range(10) for m in execution_events(f"ex-{i}", i)]
    log += [CreditsSettled.build(user_id="u", execution_id="ex-1", outcome="completed",
                                 charged=3, refunded=0, balance=7)]  # fmt: skip
    doubled = [m for m in log for _ in (0, 1)]
    before = Aggregates()
    for message in doubled:
        before.apply(message)
    assert before.duplicates == len(log)
    summary = before.summary()
    assert summary["executions_total"] == 10 and summary["credits_spent"] == 3
    assert summary["executions_failed"] == 2 and summary["executions_completed"] == 8
    after = Aggregates()  # the restarted process reads the same log from offset 0
    for message in doubled:
        after.apply(message)
    assert after.summary() == summary


async def test_g11_a_reply_reaches_its_waiting_request_once(kafka: KafkaConfig) -> None:
    """G11: "A reply reaches the gateway replica waiting for it at most once: replicas
    follow replies from the end, a waiting request is resolved once, and replies addressed
    to other replicas, repeated replies and replies from before the replica started change
    nothing." """
    cfg = await fresh_topics(kafka, [topics.GATEWAY_REPLIES, topics.DEADLETTER])
    topic = cfg.topic(topics.GATEWAY_REPLIES)
    stale = GatewayReply.build(request_id="r1", ok=False)
    await publish_raw(cfg, topic, [("gw-a", stale, [(REPLY_TO_HEADER, b"gw-a")])])
    replies = Replies(cfg, "gw-a")
    await replies.start()
    try:
        waiting = replies.expect("r1")
        first = GatewayReply.build(request_id="r1", ok=True, body={"n": 1})
        other = GatewayReply.build(request_id="r1", ok=True, body={"n": 2})
        await publish_raw(cfg, topic, [
            ("gw-b", other, [(REPLY_TO_HEADER, b"gw-b")]),
            ("gw-a", first, [(REPLY_TO_HEADER, b"gw-a")]),
            ("gw-a", first, [(REPLY_TO_HEADER, b"gw-a")]),
        ])  # fmt: skip
        async with asyncio.timeout(20):
            got = await waiting
    finally:
        await replies.stop()
    assert got.message_id == first.message_id  # not the stale one, not the other replica's


async def test_g12_usage_is_counted_once(
    kafka: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    """G12: "Usage records are best effort on their way in (the gateway buffers them and
    drops the oldest when its buffer is full) and counted once when recorded: the usage
    projection sees every UsageRecorded once." """
    cfg = await fresh_topics(kafka, [topics.USAGE, topics.DEADLETTER])
    a, b, c = (UsageRecorded.build(user_id="u", request_id=r, method="GET", path="/x",
                                   status_code=200, duration_ms=2.0, credits=1)
               for r in ("r0", "r1", "r2"))  # fmt: skip
    producer = make_producer(cfg)
    recorder = UsageRecorder(cfg, producer, max_pending=2)
    for message in (c, a, b):  # three requests while Kafka is away: the oldest goes
        recorder.record(message)
    await producer.start()
    try:
        await recorder.start()
        await recorder.stop()  # flushes what is buffered
    finally:
        await producer.stop()
    assert (recorder.dropped, recorder.sent) == (1, 2)
    await publish(cfg, cfg.topic(topics.USAGE), [("u", a)])  # a published twice
    async with Projector(cfg, database_url, usage_projection(), schema=pg_schema) as projector:
        async with asyncio.timeout(20):
            await projector.wait_until_caught_up()
    conn = await asyncpg.connect(database_url)
    try:
        total = await conn.fetchrow(f'SELECT * FROM "{pg_schema}".usage_totals')
    finally:
        await conn.close()
    assert (total["requests"], total["credits"]) == (2, 2)


# --- G13: dead letters ---------------------------------------------------------------------


async def test_g13_a_dead_letter_names_its_origin_under_one_id(kafka: KafkaConfig) -> None:
    """G13: "A record a consumer cannot handle goes to spine.deadletter with the error and
    its origin (topic, partition, offset, key, payload), and the consumer goes on; the
    letter's message_id derives from the consumer and the origin, so the same record
    dead-lettered again — after a crash, or by every replica of a follower — carries the
    same id." (Every consumed topic: tests/crash/test_poison.py.)"""
    cfg = await fresh_topics(kafka, [topics.SERVICE_HEARTBEATS, topics.DEADLETTER])
    topic = cfg.topic(topics.SERVICE_HEARTBEATS)
    good = ServiceHeartbeat.build(service="s", instance_id="s-1", started_at=utcnow())
    [bad, _] = await publish_raw(cfg, topic, [("s-1", b"\x00garbage", None), ("s-1", good, None)])
    applied: list[Message] = []
    replicas = [
        TopicFollower(cfg, topic, lambda m, _r: applied.append(m), name="beats-view",
                      dead_letters=True)
        for _ in range(2)
    ]  # fmt: skip
    for replica in replicas:
        await replica.start()
    try:
        for replica in replicas:
            await replica.wait_caught_up(20)
        letters = await dead_letters(cfg, lambda d: d.data.origin_offset == bad.offset, 2)
    finally:
        for replica in replicas:
            await replica.stop()
    assert [m.message_id for m in applied] == [good.message_id] * 2  # both went on
    first, second = letters
    assert (
        first.message_id
        == second.message_id
        == dead_letter_id("beats-view", topic, bad.partition, bad.offset)
    )
    d = first.data
    assert (d.origin_topic, d.origin_partition, d.origin_key) == (topic, bad.partition, "s-1")
    assert d.error_type == "UndecodableMessage" and d.consumer == "beats-view"
    assert d.payload_b64 and isinstance(first, DeadLetter)
    assert dead_letter_id("other", topic, bad.partition, bad.offset) != first.message_id
    record = type("R", (), {"topic": topic, "partition": 0, "offset": 7, "key": None,
                            "value": b"x"})()  # fmt: skip
    assert dead_letter(record, ValueError("e"), "c").message_id == dead_letter_id("c", topic, 0, 7)
