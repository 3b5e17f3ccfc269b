"""TransactionalLoop against the real broker: exactly-once outputs, dead letters, crash, fencing."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import MessageSizeTooLargeError, ProducerFenced
from spine_contracts import (
    AgentResult,
    CancelExecution,
    DeadLetter,
    Message,
    parse,
    to_bytes,
    topics,
)
from spine_servicekit.kafka import KafkaConfig, make_admin, make_consumer, make_producer
from spine_servicekit.txloop import TransactionalLoop
from support import TopicTail, fresh_topics, log_tail, partitions_of, spawn, stop

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("_txloop_worker.py")


def _load_worker() -> ModuleType:
    """The worker is also a script; with importlib import mode it is loaded by path."""
    spec = importlib.util.spec_from_file_location("_txloop_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


_worker = _load_worker()
FanOutHandler = _worker.FanOutHandler
POISON: str = _worker.POISON
HUGE: str = _worker.HUGE
RAISE: str = _worker.RAISE
SPECS = (
    topics.EXECUTION_COMMANDS,
    topics.AGENT_RESULTS,
    topics.EXECUTION_EVENTS,
    topics.DEADLETTER,
)
FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 300}


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def cfg(kafka: KafkaConfig) -> KafkaConfig:
    """Topics of one test under the module's prefix (deleted with the module's topics)."""
    return await fresh_topics(kafka, SPECS)


#: the key whose outputs the broker refuses (see :func:`refusing_producer`)
REFUSED = "exec-refused"


def refusing_producer(cfg: KafkaConfig) -> Callable[[str], AIOKafkaProducer]:
    """Producers whose broker refuses the events keyed ``REFUSED`` as too large, as a broker
    whose ``message.max.bytes`` is below ``SPINE_KAFKA_MAX_MESSAGE_BYTES`` would."""

    events = cfg.topic(topics.EXECUTION_EVENTS)

    def factory(txid: str) -> AIOKafkaProducer:
        producer = make_producer(cfg, transactional_id=txid)
        send = producer.send

        async def send_or_refuse(topic: str, value: bytes, **kw: Any) -> Any:
            if kw.get("key") == REFUSED.encode() and topic == events:
                raise MessageSizeTooLargeError("simulated: the broker refuses this record")
            return await send(topic, value=value, **kw)

        producer.send = send_or_refuse  # type: ignore[method-assign]
        return producer

    return factory


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"g-txloop-{tag}", f"tx-txloop-{tag}"


def cancel(key: str, reason: str = "ok") -> CancelExecution:
    return CancelExecution.build(execution_id=key, reason=reason)


def agent_result(key: str) -> AgentResult:
    return AgentResult.build(
        execution_id=key, node_id="n", attempt=1, agent_id="echo", status="success"
    )


async def produce(cfg: KafkaConfig, items: Sequence[tuple[str, str, bytes]]) -> list[Any]:
    """Send (topic, key, value) records; return their RecordMetadata in order."""
    producer = make_producer(cfg)
    await producer.start()
    try:
        futures = [await producer.send(t, value=v, key=k.encode()) for t, k, v in items]
        return [await f for f in futures]
    finally:
        await producer.stop()


async def end_offsets(cfg: KafkaConfig, topic_names: Sequence[str]) -> dict[TopicPartition, int]:
    tps = await partitions_of(cfg, topic_names)
    # read_uncommitted: the high watermark, counting every record written (markers too)
    consumer = make_consumer(cfg, group_id=None, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def committed(cfg: KafkaConfig, group: str) -> dict[TopicPartition, int]:
    admin = make_admin(cfg)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
    finally:
        await admin.close()


async def wait_committed_to_end(
    cfg: KafkaConfig, group: str, topic_names: Sequence[str], within: float = 20
) -> dict[TopicPartition, int]:
    """Poll the group's committed offsets until they reach the inputs' end offsets."""
    ends = await end_offsets(cfg, topic_names)
    seen: dict[TopicPartition, int] = {}
    try:
        async with asyncio.timeout(within):
            while True:
                seen = await committed(cfg, group)
                if all(seen.get(tp, 0) == end for tp, end in ends.items()):
                    return seen
                await asyncio.sleep(0.05)  # polling the broker's offsets; no event exists
    except TimeoutError:
        raise AssertionError(f"committed {seen} never reached ends {ends}") from None


def causes(messages: Sequence[Message]) -> Counter[str]:
    return Counter(str(m.causation_id) for m in messages)


async def wait_for(
    cond: asyncio.Condition, predicate: Callable[[], bool], within: float = 15
) -> None:
    async with asyncio.timeout(within), cond:
        await cond.wait_for(predicate)


class WatchedHandler(FanOutHandler):
    """FanOutHandler that notifies a condition whenever a partition is built or dropped."""

    def __init__(self, cfg: KafkaConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.changed = asyncio.Condition()

    async def on_assigned(self, partition: int) -> None:
        await super().on_assigned(partition)
        async with self.changed:
            self.changed.notify_all()

    async def on_revoked(self, partition: int) -> None:
        await super().on_revoked(partition)
        async with self.changed:
            self.changed.notify_all()


# -- 1. happy path -----------------------------------------------------------------------------


async def test_every_input_gives_exactly_one_output_and_offsets_reach_the_end(
    cfg: KafkaConfig,
) -> None:
    group, txid = names()
    commands, results = cfg.topic(topics.EXECUTION_COMMANDS), cfg.topic(topics.AGENT_RESULTS)
    inputs: list[Message] = []
    items = []
    for i in range(200):
        key = f"exec-{i % 40}"
        message: Message = cancel(key) if i % 2 == 0 else agent_result(key)
        inputs.append(message)
        items.append((commands if i % 2 == 0 else results, key, to_bytes(message)))
    metadata = await produce(cfg, items)
    assert {(m.topic, m.partition) for m in metadata} == {
        (t, p) for t in (commands, results) for p in (0, 1)
    }, "the inputs must cover both partitions of both input topics"

    handler = FanOutHandler(cfg, outputs=1)
    loop = TransactionalLoop(
        cfg,
        group_id=group,
        input_topics=[commands, results],
        handler=handler,
        transactional_id_prefix=txid,
        consumer_name="txloop-test",
        max_batch=64,
    )
    async with loop, TopicTail(cfg, topics.EXECUTION_EVENTS) as out:
        await out.until(lambda t: len(t.records) >= 200, within=20)
        await wait_committed_to_end(cfg, group, [commands, results])
        await out.to_end()

    outputs = out.messages
    assert len(outputs) == 200
    assert causes(outputs) == Counter({str(m.message_id): 1 for m in inputs})
    key_of = {str(m.message_id): m.data.execution_id for m in inputs}  # type: ignore[attr-defined]
    assert all(r.key.decode() == key_of[str(parse(r.value).causation_id)] for r in out.records)
    assert handler.assigned == Counter({0: 1, 1: 1}), "state built once per partition"
    assert loop.stats.dead_letters == 0 and loop.stats.fenced == 0 and loop.stats.failed == 0
    async with TopicTail(cfg, topics.DEADLETTER) as dead:
        assert await dead.to_end() == []


# -- 2. poison inputs --------------------------------------------------------------------------


async def test_poison_inputs_are_dead_lettered_and_the_rest_is_processed(
    cfg: KafkaConfig,
) -> None:
    group, txid = names()
    commands = cfg.topic(topics.EXECUTION_COMMANDS)
    good = [cancel(f"exec-{i}") for i in range(30)]
    bad: dict[str, tuple[bytes, str]] = {
        "exec-undecodable": (b"\x00\xffnot json", "UndecodableMessage"),
        "exec-invalid": (
            orjson.dumps({"type": "execution.cancel", "data": {"reason": 5}}),
            "InvalidMessage",
        ),
        "exec-raise": (to_bytes(cancel("exec-raise", RAISE)), "RuntimeError"),
        "exec-poison": (to_bytes(cancel("exec-poison", POISON)), "PoisonMessage"),
        # its output is over the message limit: refused before any transaction, as the
        # handler's failure (in the batch, then alone: dead-lettered)
        "exec-huge": (to_bytes(cancel("exec-huge", HUGE)), "MessageTooLarge"),
        # its output passes the loop's check, but the broker refuses it (non-retriable):
        # fails in the batch, fails alone, dead-lettered
        REFUSED: (to_bytes(cancel(REFUSED)), "TransactionFailed"),
    }
    items = [(commands, m.data.execution_id, to_bytes(m)) for m in good]
    for n, (key, (value, _)) in enumerate(bad.items()):
        items.insert(5 + 7 * n, (commands, key, value))
    metadata = await produce(cfg, items)
    origin = {key: metadata[i] for i, (_, key, _) in enumerate(items) if key in bad}

    handler = WatchedHandler(cfg, outputs=1)
    loop = TransactionalLoop(
        cfg,
        group_id=group,
        input_topics=[commands],
        handler=handler,
        transactional_id_prefix=txid,
        consumer_name="txloop-test",
        max_batch=100,
        producer_factory=refusing_producer(cfg),
    )
    async with (
        loop,
        TopicTail(cfg, topics.EXECUTION_EVENTS) as out,
        TopicTail(cfg, topics.DEADLETTER) as dead,
    ):
        await out.until(lambda t: len(t.records) >= len(good), within=20)
        await dead.until(lambda t: len(t.records) >= len(bad), within=20)
        await wait_committed_to_end(cfg, group, [commands])

        # Still running after all that: a new input is processed.
        late = cancel("exec-late")
        await produce(cfg, [(commands, "exec-late", to_bytes(late))])
        await out.until(lambda t: len(t.records) >= len(good) + 1, within=20)
        await wait_committed_to_end(cfg, group, [commands])
        await out.to_end()
        await dead.to_end()

    assert causes(out.messages) == Counter({str(m.message_id): 1 for m in [*good, late]})
    letters = dead.messages
    assert all(isinstance(m, DeadLetter) for m in letters)
    by_key = {m.data.origin_key: m.data for m in letters}  # type: ignore[attr-defined]
    assert len(letters) == len(bad) == len(by_key), letters
    for key, (_, error_type) in bad.items():
        letter, meta = by_key[key], origin[key]
        assert (letter.origin_topic, letter.origin_partition, letter.origin_offset) == (
            commands,
            meta.partition,
            meta.offset,
        )
        assert letter.error_type == error_type and letter.error
        assert letter.consumer == "txloop-test"
    assert {r.key.decode() for r in dead.records} == set(bad)  # original key kept
    # A handler bug makes the loop rebuild that partition's state (on_assigned again).
    raise_partition = origin["exec-raise"].partition
    assert handler.assigned[raise_partition] >= 2, handler.assigned
    assert "exceeds the 1,048,576-byte message limit" in by_key["exec-huge"].error
    assert "MessageSizeTooLargeError" in by_key["exec-refused"].error
    assert loop.stats.dead_letters == len(bad) and loop.stats.fenced == 0
    # only the refused output's transaction failed: alone (and in its batch, unless that
    # batch had already been split by a handler failure); never the huge one's
    assert 1 <= loop.stats.failed <= 2, loop.stats


# -- 3. crash mid-transaction ------------------------------------------------------------------


async def start_worker(env: dict[str, str], log: Path, *args: str) -> asyncio.subprocess.Process:
    return await spawn(sys.executable, WORKER, *args, env=env, log=log)


async def test_sigkill_mid_transaction_loses_and_duplicates_nothing(
    cfg: KafkaConfig, child_env: dict[str, str], tmp_path: Path
) -> None:
    group, txid = names()
    commands = cfg.topic(topics.EXECUTION_COMMANDS)
    inputs = [cancel(f"exec-{i}") for i in range(300)]
    await produce(cfg, [(commands, m.data.execution_id, to_bytes(m)) for m in inputs])
    env = {**child_env, "SPINE_TOPIC_PREFIX": cfg.prefix}
    marker, log = tmp_path / "killed-once", tmp_path / "worker.log"
    args = (
        "--group",
        group,
        "--txid-prefix",
        txid,
        "--outputs",
        "3",
        "--delay-s",
        "0.002",
        "--max-batch",
        "20",
        "--kill-on-commit",
        "4",
        "--marker",
        str(marker),
    )

    first = await start_worker(env, log, *args)
    async with asyncio.timeout(30):
        assert await first.wait() == -signal.SIGKILL, log_tail(log)
    assert marker.exists()

    second = await start_worker(env, log, *args)
    try:
        async with TopicTail(cfg, topics.EXECUTION_EVENTS) as out:
            await out.until(lambda t: len(t.records) >= 3 * len(inputs), within=40)
            await wait_committed_to_end(cfg, group, [commands])
            await out.to_end()
    finally:
        assert await stop(second, within=20) == 0, log_tail(log)

    assert len(out.records) == 3 * len(inputs)
    assert causes(out.messages) == Counter({str(m.message_id): 3 for m in inputs})
    # The killed transaction really had written outputs: they exist, aborted.
    async with TopicTail(cfg, topics.EXECUTION_EVENTS, "read_uncommitted") as raw:
        assert len(await raw.to_end()) > 3 * len(inputs)
    lines = log.read_text().splitlines()
    events = [orjson.loads(line).get("event") for line in lines if line.startswith("{")]
    assert events.count("txloop_stopped") == 1, "the second life stops gracefully"


# -- 4. fencing --------------------------------------------------------------------------------


async def test_a_fenced_owner_cannot_commit_and_outputs_stay_exactly_once(
    cfg: KafkaConfig,
) -> None:
    group, txid = names()
    commands = cfg.topic(topics.EXECUTION_COMMANDS)
    inputs = [cancel(f"exec-{i}") for i in range(60)]
    metadata = await produce(cfg, [(commands, m.data.execution_id, to_bytes(m)) for m in inputs])
    on_p1 = {str(m.message_id) for m, md in zip(inputs, metadata, strict=True) if md.partition == 1}
    assert 0 < len(on_p1) < len(inputs)

    # Owner A's first transaction on partition 0 stops between "outputs acked" and "offsets
    # added"; meanwhile an intruder initialises the same transactional id.
    reached, release = asyncio.Event(), asyncio.Event()
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    hooked = False

    def factory(transactional_id: str) -> AIOKafkaProducer:
        nonlocal hooked
        producer = make_producer(cfg, transactional_id=transactional_id)
        if transactional_id == f"{txid}-0" and not hooked:
            hooked = True
            send_offsets = producer.send_offsets_to_transaction

            async def held(offsets: Any, group_id: str) -> None:
                reached.set()
                await release.wait()
                try:
                    await send_offsets(offsets, group_id)
                except BaseException as exc:
                    outcome.set_result(exc)
                    raise
                outcome.set_result(None)

            producer.send_offsets_to_transaction = held  # type: ignore[method-assign]
        return producer

    handler_a = WatchedHandler(cfg, outputs=1)
    a = TransactionalLoop(
        cfg,
        group_id=group,
        input_topics=[commands],
        handler=handler_a,
        transactional_id_prefix=txid,
        consumer_name="owner-a",
        max_batch=10,
        producer_factory=factory,
        consumer_options=FAST_GROUP,
    )
    intruder = make_producer(cfg, transactional_id=f"{txid}-0")
    async with a, TopicTail(cfg, topics.EXECUTION_EVENTS) as out:
        async with asyncio.timeout(20):
            await reached.wait()
        try:
            await intruder.start()  # bumps the epoch and aborts A's open transaction
            release.set()
            async with asyncio.timeout(20):
                assert isinstance(await outcome, ProducerFenced)
        finally:
            await intruder.stop()
        # A drops the state of partition 0 and stops processing it.
        await wait_for(
            handler_a.changed, lambda: handler_a.revoked[0] == 1 and a.fenced_partitions == [0]
        )
        assert a.ready_partitions == [1]

        # Partition 1 carries on; nothing of partition 0 was committed by A.
        await out.until(lambda t: len(t.records) >= len(on_p1), within=20)
        offsets = await committed(cfg, group)
        assert TopicPartition(commands, 0) not in offsets
        await out.to_end()
        assert set(causes(out.messages)) == on_p1

        # A second owner joins the group: the rebalance hands partition 0 to a fresh producer.
        handler_b = WatchedHandler(cfg, outputs=1)
        b = TransactionalLoop(
            cfg,
            group_id=group,
            input_topics=[commands],
            handler=handler_b,
            transactional_id_prefix=txid,
            consumer_name="owner-b",
            max_batch=10,
            consumer_options=FAST_GROUP,
        )
        async with b:
            await out.until(lambda t: len(t.records) >= len(inputs), within=30)
            await wait_committed_to_end(cfg, group, [commands])
            await out.to_end()
            assert sorted(a.ready_partitions + b.ready_partitions) == [0, 1]

    assert causes(out.messages) == Counter({str(m.message_id): 1 for m in inputs})
    assert a.stats.fenced == 1 and b.stats.fenced == 0
    async with TopicTail(cfg, topics.EXECUTION_EVENTS, "read_uncommitted") as raw:
        # the fenced transaction's outputs were written, then aborted
        assert len(await raw.to_end()) > len(inputs)
