"""The projector base on real Kafka and PostgreSQL: batches, restarts, SIGKILL, poison.

Each test gets its own topics (a sub-prefix of the module's) and its own schema, and
counts exactly: ``counter.n`` and ``applied`` grow once per applied event, so anything
applied twice or lost shows up as a wrong number.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import TopicPartition
from aiokafka.structs import RecordMetadata
from spine_contracts import DeadLetter, FlowDefinition, FlowNode, to_bytes, topics
from spine_contracts.messages.executions import ExecutionCompleted, ExecutionStarted
from spine_servicekit.kafka import KafkaConfig, make_producer
from spine_servicekit.postgres import drop_schema
from spine_servicekit.projector import (
    Incoming,
    Projection,
    Projector,
    ProjectorFailed,
    read_offsets,
    wait_for_stored_offsets,
)
from support import fresh_topics, read_to_end, spawn, stop

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WORKER = Path(__file__).with_name("_projector_worker.py")


def _load_worker() -> ModuleType:
    # Tests import in importlib mode, so the sibling module is loaded by path.
    spec = importlib.util.spec_from_file_location("_projector_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_worker = _load_worker()
NAME: str = _worker.NAME
Rejected: type[Exception] = _worker.Rejected
projection: Callable[..., Projection] = _worker.projection
FLOW = FlowDefinition(flow_id="f", nodes=(FlowNode(id="n1", agent_id="echo"),))

Record = tuple[str, bytes]  # (key, value)


@dataclass(frozen=True)
class Snapshot:
    counter: int
    applied: int
    distinct: int
    executions: int
    completed: int
    events: int


def started(execution_id: str) -> Record:
    message = ExecutionStarted.build(
        execution_id=execution_id, seq=0, user_id="u1", flow_id="f", flow_version="1", flow=FLOW
    )
    return execution_id, to_bytes(message)


def completed(execution_id: str) -> Record:
    return execution_id, to_bytes(ExecutionCompleted.build(execution_id=execution_id, seq=1))


def lifecycle(ids: Sequence[str]) -> list[Record]:
    return [r for eid in ids for r in (started(eid), completed(eid))]


def ids(n: int, tag: str = "e") -> list[str]:
    return [f"{tag}-{i:05d}" for i in range(n)]


async def produce(cfg: KafkaConfig, records: Sequence[Record]) -> list[RecordMetadata]:
    producer = make_producer(cfg, linger_ms=5)
    await producer.start()
    try:
        topic = cfg.topic(topics.EXECUTION_EVENTS)
        futures = [
            await producer.send(topic, value=value, key=key.encode()) for key, value in records
        ]
        return [await f for f in futures]
    finally:
        await producer.stop()


def end_offsets(metas: Sequence[RecordMetadata]) -> dict[TopicPartition, int]:
    ends: dict[TopicPartition, int] = {}
    for m in metas:
        tp = TopicPartition(m.topic, m.partition)
        ends[tp] = max(ends.get(tp, 0), m.offset + 1)
    return ends


async def snapshot(conn: asyncpg.Connection, schema: str) -> Snapshot:
    row = await conn.fetchrow(
        f"""SELECT (SELECT n FROM "{schema}".counter WHERE id = 1) AS counter,
                   (SELECT count(*) FROM "{schema}".applied) AS applied,
                   (SELECT count(DISTINCT message_id) FROM "{schema}".applied) AS distinct,
                   (SELECT count(*) FROM "{schema}".executions) AS executions,
                   (SELECT count(*) FROM "{schema}".executions
                     WHERE status = 'completed') AS completed,
                   (SELECT coalesce(sum(events), 0) FROM "{schema}".executions) AS events"""
    )
    assert row is not None
    return Snapshot(**dict(row))


@pytest_asyncio.fixture(loop_scope="session")
async def cfg(kafka: KafkaConfig) -> KafkaConfig:
    """Fresh execution-events and dead-letter topics for one test (the module drops them)."""
    return await fresh_topics(kafka, [topics.EXECUTION_EVENTS, topics.DEADLETTER])


@pytest_asyncio.fixture(loop_scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def test_projects_in_batches_and_stores_end_offsets(
    cfg: KafkaConfig, database_url: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    metas = await produce(cfg, lifecycle(ids(250)))
    assert {m.partition for m in metas} == {0, 1}
    ends = end_offsets(metas)

    projector = Projector(cfg, database_url, projection(), schema=pg_schema, max_batch=100)
    async with projector:
        async with asyncio.timeout(20):
            caught_up = await projector.wait_until_caught_up()
        assert caught_up == ends
        assert projector.applied_offsets() == ends
        assert await read_offsets(db, pg_schema, NAME) == ends

    assert await snapshot(db, pg_schema) == Snapshot(500, 500, 500, 250, 250, 500)
    assert projector.stats.applied == 500
    # One transaction per fetched batch, never one per message.
    assert 5 <= projector.stats.batches < 50


async def test_restart_resumes_from_stored_offsets(
    cfg: KafkaConfig, database_url: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    first, later = ids(150, "a"), ids(100, "b")
    async with Projector(cfg, database_url, projection(), schema=pg_schema) as projector:
        metas = await produce(cfg, [started(e) for e in first])
        async with asyncio.timeout(20):
            await projector.wait_for_offsets(end_offsets(metas))
    assert await snapshot(db, pg_schema) == Snapshot(150, 150, 150, 150, 0, 150)

    metas += await produce(cfg, [completed(e) for e in first] + [started(e) for e in later])
    ends = end_offsets(metas)
    async with Projector(cfg, database_url, projection(), schema=pg_schema) as projector:
        assert sum(projector.applied_offsets().values()) == 150  # resumed, not from zero
        async with asyncio.timeout(20):
            await projector.wait_until_caught_up()
        assert projector.stats.applied == 250
        assert projector.stats.skipped == 0  # it sought to the stored offsets, re-read nothing
    assert await read_offsets(db, pg_schema, NAME) == ends
    assert await snapshot(db, pg_schema) == Snapshot(400, 400, 400, 250, 150, 400)

    # Nothing new: a third life applies nothing.
    async with Projector(cfg, database_url, projection(), schema=pg_schema) as projector:
        async with asyncio.timeout(20):
            await projector.wait_until_caught_up()
        assert projector.stats.applied == projector.stats.skipped == 0
    assert await snapshot(db, pg_schema) == Snapshot(400, 400, 400, 250, 150, 400)


async def test_sigkill_mid_batch_applies_every_event_once(
    cfg: KafkaConfig,
    database_url: str,
    pg_schema: str,
    db: asyncpg.Connection,
    child_env: dict[str, str],
) -> None:
    metas = await produce(cfg, lifecycle(ids(2500)))
    ends = end_offsets(metas)
    assert sum(ends.values()) == 5000
    env = {**child_env, "SPINE_TOPIC_PREFIX": cfg.prefix}

    def start(*extra: str) -> Awaitable[asyncio.subprocess.Process]:
        return spawn(sys.executable, WORKER, pg_schema, *extra, env=env,
                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)  # fmt: skip

    # Batches of 200 taking >= 20 ms each; the 6th stalls after writing its rows, before
    # its offsets, and says so on stdout: the kill lands exactly mid-batch.
    worker = await start("--batch", "200", "--delay", "0.02", "--stall-at", "6")
    output: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            await wait_for_stored_offsets(
                database_url, pg_schema, NAME, lambda o: 0 < sum(o.values())
            )
            assert worker.stdout is not None
            while b"test_projection_stalled" not in (line := await worker.stdout.readline()):
                assert line, b"".join(output).decode()[-3000:]
                output.append(line)
    finally:
        await stop(worker, sig=signal.SIGKILL)
    assert worker.returncode == -signal.SIGKILL

    async with db.transaction(isolation="repeatable_read"):
        stored = await read_offsets(db, pg_schema, NAME)
        at_kill = await snapshot(db, pg_schema)
    assert sum(stored.values()) == 5 * 200, "five batches committed, the sixth did not"
    # Rows and offsets committed together: what is stored is exactly what was applied.
    assert at_kill.counter == at_kill.applied == at_kill.distinct == 1000

    worker = await start("--batch", "500")
    try:
        async with asyncio.timeout(30):
            await wait_for_stored_offsets(database_url, pg_schema, NAME, lambda o: o == ends)
    finally:
        worker.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            rest, _ = await worker.communicate()
    assert worker.returncode == 0, rest.decode()[-3000:]

    assert await snapshot(db, pg_schema) == Snapshot(5000, 5000, 5000, 2500, 2500, 5000)
    assert await read_offsets(db, pg_schema, NAME) == ends


async def test_poison_goes_to_dead_letters_and_offsets_move_past_it(
    cfg: KafkaConfig, database_url: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    good = ids(20)
    poison: list[Record] = [
        ("p-1", b"\xff not json"),
        ("p-2", b'{"type": "execution.started", "data": {"execution_id": "x"}}'),
        ("p-3", b'{"type": "execution.no_such_event", "data": {}}'),
        ("p-4", b"[1, 2, 3]"),
        started("refused"),  # valid, but the projection's apply raises on it
    ]
    records = [started(e) for e in good[:10]] + poison + [started(e) for e in good[10:]]
    metas = await produce(cfg, records)
    ends = end_offsets(metas)
    origins = {
        (m.topic, m.partition, m.offset): key
        for m, (key, _) in zip(metas, records, strict=True)
        if key.startswith("p-") or key == "refused"
    }

    refusing = projection(reject=frozenset({"refused"}))
    async with Projector(cfg, database_url, refusing, schema=pg_schema) as projector:
        async with asyncio.timeout(20):
            await projector.wait_until_caught_up()
        assert projector.stats.dead_letters == 5
        assert projector.stats.applied == 20
    assert await read_offsets(db, pg_schema, NAME) == ends
    assert await snapshot(db, pg_schema) == Snapshot(20, 20, 20, 20, 0, 20)

    # Dead letters were acknowledged before the offsets committed: all five are there.
    log = await read_to_end(cfg, topics.DEADLETTER)
    letters = [d for d in log if isinstance(d, DeadLetter)]
    assert len(letters) == len(log) == 5, log
    by_origin = {(d.data.origin_topic, d.data.origin_partition, d.data.origin_offset): d
                 for d in letters}  # fmt: skip
    assert set(by_origin) == set(origins)
    kinds = {origins[o]: (d.data.error_type, d.data.origin_key) for o, d in by_origin.items()}
    assert kinds == {
        "p-1": ("UndecodableMessage", "p-1"),
        "p-2": ("InvalidMessage", "p-2"),
        "p-3": ("UnknownMessageType", "p-3"),
        "p-4": ("UndecodableMessage", "p-4"),
        "refused": (Rejected.__name__, "refused"),
    }
    assert all(d.data.consumer == projector.name and d.data.error for d in letters)


async def test_two_replicas_on_one_schema_apply_once(
    cfg: KafkaConfig, database_url: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    """Two self-assigned projectors race for the same rows; the offset locks fence them."""
    metas = await produce(cfg, lifecycle(ids(200)))
    ends = end_offsets(metas)
    one = Projector(cfg, database_url, projection(), schema=pg_schema, max_batch=50)
    two = Projector(cfg, database_url, projection(), schema=pg_schema, max_batch=50)
    async with one, two:
        async with asyncio.timeout(20):
            await asyncio.gather(one.wait_until_caught_up(), two.wait_until_caught_up())
    assert one.stats.applied + two.stats.applied == 400
    assert await read_offsets(db, pg_schema, NAME) == ends
    assert await snapshot(db, pg_schema) == Snapshot(400, 400, 400, 200, 200, 400)


async def test_consumer_group_splits_partitions_and_seeks_to_stored_offsets(
    cfg: KafkaConfig, database_url: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    group = f"{cfg.prefix}projector"
    first = await produce(cfg, [started(e) for e in ids(100)])
    async with Projector(cfg, database_url, projection(), schema=pg_schema, group_id=group) as p:
        async with asyncio.timeout(20):
            await p.wait_for_offsets(end_offsets(first))

    one = Projector(cfg, database_url, projection(), schema=pg_schema, group_id=group)
    two = Projector(cfg, database_url, projection(), schema=pg_schema, group_id=group)
    async with one, two:
        metas = first + await produce(cfg, [completed(e) for e in ids(100)])
        ends = end_offsets(metas)
        async with asyncio.timeout(30):
            await wait_for_stored_offsets(database_url, pg_schema, NAME, lambda o: o == ends)
        assignments = (one.assignment(), two.assignment())
    assert not assignments[0] & assignments[1]
    assert assignments[0] | assignments[1] == set(ends)
    assert await snapshot(db, pg_schema) == Snapshot(200, 200, 200, 100, 100, 200)


async def test_rebuild_into_another_schema_equals_the_live_one(
    cfg: KafkaConfig, database_url: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    await produce(cfg, lifecycle(ids(100)) + [started(e) for e in ids(30, "x")])
    live = Projector(cfg, database_url, projection(), schema=pg_schema)
    rebuild = live.with_schema(f"{pg_schema}_rebuild")
    try:
        async with live, rebuild:
            async with asyncio.timeout(20):
                await asyncio.gather(live.wait_until_caught_up(), rebuild.wait_until_caught_up())
        table = 'SELECT * FROM "{}".executions ORDER BY execution_id'
        live_rows = await db.fetch(table.format(pg_schema))
        assert len(live_rows) == 130
        assert await db.fetch(table.format(rebuild.schema)) == live_rows
        assert await read_offsets(db, rebuild.schema, NAME) == await read_offsets(
            db, pg_schema, NAME
        )

        await rebuild.reset()
        assert await read_offsets(db, rebuild.schema, NAME) == {}
        async with rebuild:  # from offset 0 again, into re-created tables
            async with asyncio.timeout(20):
                await rebuild.wait_until_caught_up()
        assert await snapshot(db, rebuild.schema) == Snapshot(230, 230, 230, 130, 100, 230)
    finally:
        await drop_schema(db, rebuild.schema)


async def test_lost_database_connection_retries_the_batch_once(
    cfg: KafkaConfig, database_url: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    base = projection()
    calls = 0

    async def apply_losing_its_connection(
        conn: asyncpg.Connection, batch: Sequence[Incoming]
    ) -> None:
        nonlocal calls
        calls += 1
        await base.apply(conn, batch)
        if calls == 2:  # rows written, offsets not: the server ends the session here
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    flaky = replace(base, apply=apply_losing_its_connection)
    metas = await produce(cfg, lifecycle(ids(200)))
    async with Projector(cfg, database_url, flaky, schema=pg_schema, max_batch=100) as projector:
        async with asyncio.timeout(20):
            await projector.wait_until_caught_up()
        assert projector.failure is None
    assert calls > 4  # the second batch ran twice
    assert await read_offsets(db, pg_schema, NAME) == end_offsets(metas)
    assert await snapshot(db, pg_schema) == Snapshot(400, 400, 400, 200, 200, 400)


async def test_a_broken_projection_stops_instead_of_dead_lettering(
    cfg: KafkaConfig, database_url: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    async def apply_to_a_missing_table(conn: asyncpg.Connection, _: Sequence[Incoming]) -> None:
        await conn.execute("INSERT INTO no_such_table VALUES (1)")

    broken = replace(projection(), apply=apply_to_a_missing_table)
    await produce(cfg, [started("e-1")])
    async with Projector(cfg, database_url, broken, schema=pg_schema) as projector:
        with pytest.raises(ProjectorFailed) as failed:
            async with asyncio.timeout(20):
                await projector.wait_until_caught_up()
        assert isinstance(failed.value.__cause__, asyncpg.UndefinedTableError)
        assert projector.stats.dead_letters == 0
    assert sum((await read_offsets(db, pg_schema, NAME)).values()) == 0


async def test_transactional_input_skips_aborted_records_and_reaches_end_offsets(
    cfg: KafkaConfig, database_url: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    """Commit markers take offsets too: stored positions must still reach the end offsets."""
    topic = cfg.topic(topics.EXECUTION_EVENTS)
    producer = make_producer(cfg, transactional_id=f"{cfg.prefix}writer")
    await producer.start()
    try:
        for records, commit in (
            (lifecycle(ids(20, "a")), True),
            ([started(e) for e in ids(10, "aborted")], False),
            ([started(e) for e in ids(10, "c")], True),
        ):
            await producer.begin_transaction()
            sent = [await producer.send(topic, value=v, key=k.encode()) for k, v in records]
            await asyncio.gather(*sent)
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
    finally:
        await producer.stop()

    async with Projector(cfg, database_url, projection(), schema=pg_schema) as projector:
        async with asyncio.timeout(20):
            ends = await projector.wait_until_caught_up()
    assert sum(ends.values()) > 60  # records plus markers
    assert await read_offsets(db, pg_schema, NAME) == ends
    assert await snapshot(db, pg_schema) == Snapshot(50, 50, 50, 30, 20, 50)


async def test_pacing_holds_only_bursts(
    cfg: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    """``min_interval_s`` with ``pace_from``: records one at a time are applied at once (a
    request waits on them); after a batch of ``pace_from`` or more the next waits."""

    def paced() -> Projector:
        return Projector(
            cfg,
            database_url,
            projection(),
            schema=pg_schema,
            max_batch=100,
            min_interval_s=60.0,
            pace_from=50,
        )

    async with paced() as projector:
        for eid in ids(3, "single"):  # each alone: a 60 s pause would time these out
            metas = await produce(cfg, [started(eid)])
            async with asyncio.timeout(10):
                await projector.wait_for_offsets(end_offsets(metas))
    await produce(cfg, [started(e) for e in ids(400, "burst")])
    async with paced() as projector:  # a backlog: the first batch is a full one (100)
        async with asyncio.timeout(10):
            await projector.wait_for(lambda _: projector.stats.applied >= 50)
        await asyncio.sleep(1.0)  # the absence of the next batch: nothing to await
        assert projector.stats.applied < 400


async def test_a_pause_holds_the_apply_never_the_tap(
    cfg: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    """A live stream never waits for the pause after a burst: what arrives meanwhile is shown
    to the tap at once, and applied when the pause is over."""
    seen: list[str] = []
    arrived = asyncio.Event()

    def tap(batch: Sequence[Incoming]) -> None:
        seen.extend(str(i.message.data.execution_id) for i in batch)  # type: ignore[attr-defined]
        if any(e.startswith("late") for e in seen):
            arrived.set()

    projector = Projector(
        cfg,
        database_url,
        projection(),
        schema=pg_schema,
        min_interval_s=60.0,
        pace_from=1,  # every batch is a burst: the first one starts a 60 s pause
        tap=tap,
    )
    async with projector:
        first = await produce(cfg, [started(e) for e in ids(1, "first")])
        async with asyncio.timeout(10):
            await projector.wait_for_offsets(end_offsets(first))
        late = await produce(cfg, [started(e) for e in ids(1, "late")])
        async with asyncio.timeout(10):  # the pause is 60 s: only the tap can be this quick
            await arrived.wait()
        assert projector.stats.applied == 1  # the late one is held for the pause's end
        applied = projector.applied_offsets()
        assert any(applied.get(tp, 0) < n for tp, n in end_offsets(late).items())
    assert len([e for e in seen if e.startswith("late")]) == 1  # shown once, not again


def offsets_recorder(
    into: list[tuple[int, int]], projector: Callable[[], Projector]
) -> Callable[[Sequence[Incoming]], None]:
    """A hook that records each item's offset beside its partition's applied offset then."""

    def record(batch: Sequence[Incoming]) -> None:
        applied = projector().applied_offsets()
        for item in batch:
            tp = TopicPartition(item.topic, item.partition)
            into.append((item.offset, applied.get(tp, 0)))

    return record


async def test_tap_sees_each_batch_before_it_is_applied_and_cannot_stop_the_loop(
    cfg: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    """The gateway streams from the tap: every record, decoded, ahead of its PostgreSQL
    transaction; a tap that raises is logged, the read model goes on."""
    metas = await produce(cfg, lifecycle(ids(60, "tap")))
    tapped: list[tuple[int, int]] = []  # (record offset, applied offset of its partition then)
    projector: Projector
    record = offsets_recorder(tapped, lambda: projector)

    def tap(batch: Sequence[Incoming]) -> None:
        record(batch)
        raise RuntimeError("a broken subscriber")

    projector = Projector(cfg, database_url, projection(), schema=pg_schema, max_batch=25, tap=tap)
    async with projector:
        async with asyncio.timeout(20):
            await projector.wait_for_offsets(end_offsets(metas))
    assert len(tapped) == len(metas) == 120
    assert all(applied <= offset for offset, applied in tapped)  # none was applied yet
    assert projector.stats.applied == 120


async def test_on_applied_sees_each_batch_once_committed_before_any_waiter_wakes(
    cfg: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    """The gateway drops cached rows here: by then the read model has the change, and a
    request woken by the commit cannot find the old row in the cache."""
    metas = await produce(cfg, lifecycle(ids(40, "hook")))
    seen: list[tuple[int, int]] = []  # (record offset, applied offset of its partition then)
    projector: Projector
    on_applied = offsets_recorder(seen, lambda: projector)

    projector = Projector(
        cfg, database_url, projection(), schema=pg_schema, max_batch=10, on_applied=on_applied
    )
    async with projector:
        async with asyncio.timeout(20):
            await projector.wait_for_offsets(end_offsets(metas))
        assert len(seen) == len(metas) == 80  # before the last waiter woke
    assert all(applied > offset for offset, applied in seen)  # each one committed already
