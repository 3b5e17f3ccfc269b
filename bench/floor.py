"""The floor: an execution's Kafka hops with bare aiokafka, the same guarantees, no AI Spine code.

One process, one event loop, on fresh ``benchfloor<hex>.`` topics (deleted afterwards):

    client ──reserve──▶ [auth hop] ──start──▶ [orchestrator hop] ──task──▶ [agent] ──result──┐
      ▲   ◀──reply───┘                          ▲    │                                      │
      │                                         └────┼──────────────────────────────────────┘
      └──────────────────completed event─────────────┘

* the **auth** and **orchestrator** hops are consume–decide–produce loops like
  ``spine_servicekit.txloop``: a group member (range assignor) reading ``read_committed``,
  one transactional producer per input partition, and for each polled batch of a partition
  one transaction ``begin → send outputs → send_offsets_to_transaction → commit``;
* the orchestrator's inputs (commands, results) are co-partitioned and keyed by execution;
  it keeps a counter per execution and dispatches a whole stage at once (fan-out), the next
  stage when every result of the stage is in, then the completed event;
* the **agent** reads its tasks ``read_committed``, answers each with a result from an
  idempotent ``acks=all`` producer and commits offsets every 200 ms, like the agent SDK;
* the **client** produces with an idempotent ``acks=all`` producer and follows the replies
  and events topics without a group (``read_committed``), like the gateway.

Client settings are AI Spine's (``fetch_max_wait_ms=500``, ``linger_ms=0``), so the ratio
to it measures code, not tuning. The login is AI Spine's too: every client takes the
``security`` arguments it is given (``KafkaSecurity.client_kwargs()``), so on a secured
broker the floor pays for SASL as AI Spine does. What the floor leaves out on purpose: the
extra records AI Spine writes in the same transactions (events, snapshots), HTTP,
PostgreSQL, Redis.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.structs import OffsetAndMetadata

from .checks import Tally
from .common import SHAPES, WARMUP, Latency, Throughput, Tick, no_tick, out_of_time

FETCH_MAX_WAIT_MS = 500  # AI Spine's SPINE_KAFKA_FETCH_MAX_WAIT_MS default
USER = "bench-user"

Out = tuple[str, bytes, bytes]  # topic, key, value
Decide = Callable[[ConsumerRecord[bytes, bytes]], list[Out]]
Security = Mapping[str, Any]  # aiokafka's security_protocol, sasl_*, ssl_context arguments


def _producer(bootstrap: str, security: Security, **extra: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        max_batch_size=256 * 1024,
        **extra,
        **security,
    )


def _consumer(
    bootstrap: str, security: Security, *topics: str, group_id: str | None
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_poll_records=500,
        partition_assignment_strategy=(RangePartitionAssignor,),
        **security,
    )


class TxHop:
    """A consume–decide–produce loop with one transaction per polled partition batch."""

    def __init__(
        self,
        bootstrap: str,
        security: Security,
        name: str,
        group: str,
        inputs: Sequence[str],
        partitions: int,
        decide: Decide,
    ) -> None:
        self.name = name
        self.group = group
        self.decide = decide
        self.partitions = partitions
        self.consumer = _consumer(bootstrap, security, *inputs, group_id=group)
        self.producers = {
            p: _producer(
                bootstrap,
                security,
                transactional_id=f"{group}-{p}",
                transaction_timeout_ms=60_000,
            )
            for p in range(partitions)
        }
        self.transactions = 0
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.expected = len(inputs) * partitions

    async def start(self) -> None:
        for producer in self.producers.values():
            await producer.start()  # InitProducerId: fences any earlier owner of the id
        await self.consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"floor-{self.name}")

    async def _run(self) -> None:
        consumer = self.consumer
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            if len(consumer.assignment()) == self.expected:
                self.ready.set()
            if not batches:
                continue
            by_partition: dict[int, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
            for tp, records in batches.items():
                by_partition[tp.partition].extend(records)
            await asyncio.gather(*(self._transact(p, rs) for p, rs in by_partition.items()))

    async def _transact(self, p: int, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        records.sort(key=lambda r: r.timestamp)
        outgoing: list[Out] = []
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for record in records:
            outgoing.extend(self.decide(record))
            tp = TopicPartition(record.topic, record.partition)
            if tp not in offsets or offsets[tp].offset <= record.offset:
                offsets[tp] = OffsetAndMetadata(record.offset + 1, "")
        producer = self.producers[p]
        await producer.begin_transaction()
        futures = [await producer.send(t, value=v, key=k) for t, k, v in outgoing]
        await asyncio.gather(*futures)
        await producer.send_offsets_to_transaction(offsets, self.group)
        await producer.commit_transaction()
        self.transactions += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()
        for producer in self.producers.values():
            await producer.stop()


class AgentHop:
    """Answer every task with a result; commit consumed offsets every 200 ms."""

    def __init__(
        self, bootstrap: str, security: Security, group: str, tasks: str, results: str
    ) -> None:
        self.consumer = _consumer(bootstrap, security, tasks, group_id=group)
        self.producer = _producer(bootstrap, security)
        self.results = results
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._partitions = 0
        # for the checks: tasks read (dispatches) and answered (runs), by "execution:node"
        self.dispatches: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()

    async def start(self, partitions: int) -> None:
        self._partitions = partitions
        await self.producer.start()
        await self.consumer.start()
        self._task = asyncio.create_task(self._run(), name="floor-agent")

    async def _run(self) -> None:
        consumer, producer = self.consumer, self.producer
        done: dict[TopicPartition, OffsetAndMetadata] = {}
        last_commit = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=256)
            if len(consumer.assignment()) == self._partitions:
                self.ready.set()
            futures = []
            for tp, records in batches.items():
                for record in records:
                    task = orjson.loads(record.value)
                    self.dispatches[f"{task['e']}:{task['n']}"] += 1
                    result = {"e": task["e"], "n": task["n"], "output": {"echo": task["input"]}}
                    value = orjson.dumps(result)
                    futures.append(await producer.send(self.results, value=value, key=record.key))
                    self.runs[f"{task['e']}:{task['n']}"] += 1
                done[tp] = OffsetAndMetadata(records[-1].offset + 1, "")
            if futures:
                await asyncio.gather(*futures)  # a task counts as done once its result is acked
            if done and time.monotonic() - last_commit >= 0.2:
                await consumer.commit(dict(done))
                done.clear()
                last_commit = time.monotonic()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()
        await self.producer.stop()


class Floor:
    """Topics, the three hops and the client; ``async with Floor(...) as floor``."""

    def __init__(self, bootstrap: str, partitions: int, *, security: Security) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.partitions = partitions
        self.prefix = f"benchfloor{uuid.uuid4().hex[:8]}."
        p = self.prefix
        self.t_auth = p + "auth.commands"
        self.t_replies = p + "gateway.replies"
        self.t_commands = p + "executions.commands"
        self.t_results = p + "agents.results"
        self.t_tasks = p + "agents.echo.tasks"
        self.t_events = p + "executions.events"
        self.state: dict[str, list[Any]] = {}  # execution -> [shape, stage, pending]
        self.auth = TxHop(
            bootstrap, security, "auth", p + "auth", [self.t_auth], partitions, self._auth_decide
        )
        self.orchestrator = TxHop(
            bootstrap,
            security,
            "orchestrator",
            p + "orchestrator",
            [self.t_commands, self.t_results],
            partitions,
            self._orchestrator_decide,
        )
        self.agent = AgentHop(bootstrap, security, p + "agent.echo", self.t_tasks, self.t_results)
        self.producer = _producer(bootstrap, security)
        self.follower = _consumer(bootstrap, security, group_id=None)
        self._follow_task: asyncio.Task[None] | None = None
        self.replied: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self.on_completed: Tick = no_tick
        self._expected: set[str] = set()  # a throughput phase's executions not yet completed
        self._all_done = asyncio.Event()
        # for the checks, decoded after the measured window: submitted ids, completed records
        self.submitted: list[str] = []
        self.completed_records: dict[str, list[bytes]] = defaultdict(list)

    # -- the decisions -----------------------------------------------------------------------

    def _auth_decide(self, record: ConsumerRecord[bytes, bytes]) -> list[Out]:
        cmd = orjson.loads(record.value)
        key = cmd["e"].encode()
        return [
            (self.t_replies, key, orjson.dumps({"e": cmd["e"], "ok": True})),
            (self.t_commands, key, record.value),
        ]

    def _orchestrator_decide(self, record: ConsumerRecord[bytes, bytes]) -> list[Out]:
        msg = orjson.loads(record.value)
        eid: str = msg["e"]
        if record.topic == self.t_commands:
            shape = SHAPES[msg["shape"]]
            self.state[eid] = [shape, 0, shape[0]]
            return self._dispatch(eid, 0, msg["input"])
        st = self.state.get(eid)
        if st is None:
            return []
        st[2] -= 1
        if st[2] > 0:
            return []
        st[1] += 1
        if st[1] == len(st[0]):
            del self.state[eid]
            event = {"e": eid, "type": "completed", "output": msg["output"]}
            return [(self.t_events, record.key, orjson.dumps(event))]
        st[2] = st[0][st[1]]
        return self._dispatch(eid, st[1], msg["output"])

    def _dispatch(self, eid: str, stage: int, data: Any) -> list[Out]:
        shape = self.state[eid][0]
        key = eid.encode()
        return [
            (self.t_tasks, key, orjson.dumps({"e": eid, "n": f"s{stage}n{i}", "input": data}))
            for i in range(shape[stage])
        ]

    # -- set-up ------------------------------------------------------------------------------

    async def __aenter__(self) -> Floor:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.security)
        await admin.start()
        try:
            counts = {
                self.t_auth: self.partitions,
                self.t_replies: 1,
                self.t_commands: self.partitions,
                self.t_results: self.partitions,
                self.t_tasks: self.partitions,
                self.t_events: self.partitions,
            }
            await admin.create_topics(
                [NewTopic(t, n, 1) for t, n in counts.items()], timeout_ms=30_000
            )
            deadline = time.monotonic() + 30
            while True:
                described = await admin.describe_topics(list(counts))
                if all(
                    d["error_code"] == 0
                    and len(d["partitions"]) == counts[d["topic"]]
                    and all(p["leader"] >= 0 for p in d["partitions"])
                    for d in described
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("floor topics not visible after 30 s")
                await asyncio.sleep(0.1)
        finally:
            await admin.close()
        await self.producer.start()
        await self.follower.start()
        tps = [TopicPartition(self.t_replies, 0)] + [
            TopicPartition(self.t_events, p) for p in range(self.partitions)
        ]
        self.follower.assign(tps)
        await self.follower.seek_to_end(*tps)
        self._follow_task = asyncio.create_task(self._follow(), name="floor-client")
        await self.auth.start()
        await self.orchestrator.start()
        await self.agent.start(self.partitions)
        for hop in (self.auth, self.orchestrator, self.agent):
            await asyncio.wait_for(hop.ready.wait(), 60)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._follow_task is not None:
            self._follow_task.cancel()
            await asyncio.gather(self._follow_task, return_exceptions=True)
        for part in (self.agent, self.orchestrator, self.auth):
            await part.stop()
        await self.follower.stop()
        await self.producer.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.security)
        await admin.start()
        try:
            doomed = [t for t in await admin.list_topics() if t.startswith(self.prefix)]
            if doomed:
                await admin.delete_topics(doomed)
        finally:
            await admin.close()

    async def _follow(self) -> None:
        while True:
            batches = await self.follower.getmany(timeout_ms=100)
            now = time.perf_counter()
            for tp, records in batches.items():
                for record in records:
                    eid = record.key.decode()
                    if tp.topic == self.t_replies:
                        self.replied[eid] = now
                        continue
                    self.completed.setdefault(eid, now)
                    self.completed_records[eid].append(record.value)
                    self.on_completed(1)
                    if eid in self._expected:
                        self._expected.discard(eid)
                        if not self._expected:
                            self._all_done.set()
                    waiter = self._waiters.pop(eid, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(None)

    # -- the measures ------------------------------------------------------------------------

    def _reserve(self, shape: str) -> tuple[str, bytes]:
        eid = str(uuid.uuid4())
        self.submitted.append(eid)
        cmd = {"e": eid, "shape": shape, "user": USER, "input": {"text": "hello", "n": 1}}
        return eid, orjson.dumps(cmd)

    async def latency(
        self,
        shape: str,
        runs: int,
        tick: Tick = no_tick,
        deadline: float | None = None,
        warmup_s: float = 0.0,
    ) -> Latency:
        """``warmup_s``: unmeasured executions for that long first (besides the WARMUP ones):
        a broker started moments ago by ``make up`` runs its first seconds of transactions
        before the JVM has compiled them, and the floor, measured first, would pay for it."""
        out = Latency([])
        loop = asyncio.get_running_loop()
        warm_until = time.perf_counter() + warmup_s
        warmed = measured = 0
        while measured < runs:
            if out_of_time(deadline):
                out.truncated = True
                break
            warming = warmed < WARMUP or time.perf_counter() < warm_until
            if warming:
                warmed += 1
            else:
                measured += 1
            eid, value = self._reserve(shape)
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters[eid] = fut
            t0 = time.perf_counter()
            await self.producer.send_and_wait(self.t_auth, value, key=USER.encode())
            try:
                await asyncio.wait_for(fut, 30)
            except TimeoutError:
                out.fail("timeout")
                continue
            if not warming:
                out.samples_ms.append((self.completed[eid] - t0) * 1000)
                out.accepted_ms.append((self.replied.get(eid, t0) - t0) * 1000)
                tick(1)
        out.warmup_runs = warmed
        return out

    async def throughput(
        self, shape: str, n: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> Throughput:
        batch = [self._reserve(shape) for _ in range(n)]
        ids = {eid for eid, _ in batch}
        self._expected = set(ids)
        self._all_done.clear()
        self.on_completed = tick
        t0 = time.perf_counter()
        futures = [await self.producer.send(self.t_auth, v, key=USER.encode()) for _, v in batch]
        await asyncio.gather(*futures)
        t_submit = time.perf_counter()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait_for(self._all_done.wait(), timeout)
        except TimeoutError:
            pass
        self._expected = set()
        t_stop = time.perf_counter()
        self.on_completed = no_tick
        done = [self.completed[e] for e in ids if e in self.completed]
        unfinished = n - len(done)
        return Throughput(
            submitted=n,
            completed=len(done),
            failed=0,
            unfinished=unfinished,
            lost=0 if not unfinished else None,
            elapsed_s=(max(done) if not unfinished else t_stop) - t0,
            submit_s=t_submit - t0,
        )

    def tally(self) -> Tally:
        """What the phase since the last call saw, for ``bench.checks.audit`` (and forget it).

        Dispatches are the tasks the agent read (``read_committed``: each is a committed
        dispatch), runs the results it produced; the floor's tasks have one attempt.
        """
        out = Tally(accepted=set(self.submitted))
        for eid in self.submitted:
            for value in self.completed_records.pop(eid, ()):
                out.end(eid, "completed", orjson.loads(value)["output"])
        for key, n in self.agent.dispatches.items():
            eid, node = key.split(":", 1)
            out.dispatches[(eid, node, 1)] = n
            out.agent_work.add(eid)
        out.runs.update(self.agent.runs)
        self.submitted = []
        self.agent.dispatches.clear()
        self.agent.runs.clear()
        return out

    @property
    def transactions(self) -> int:
        return self.auth.transactions + self.orchestrator.transactions
