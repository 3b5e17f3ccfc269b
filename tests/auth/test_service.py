"""The auth service on real Kafka and PostgreSQL: replies, reservations under load, settling,
withdrawing, rebuilding after a restart, the projection — and the process itself.

Every in-process test gets its own topics (a sub-prefix of the module's), so each test's
consumer group starts from an empty commands topic. Nothing sleeps: each test awaits the
records it expects by consuming with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import reduce
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from spine_auth.app import check_co_partitioned, make_loop
from spine_auth.domain import WITHDRAW_REASON, evolve
from spine_auth.errors import ErrorCode
from spine_auth.handlers import AuthHandler
from spine_auth.projector import auth_projection
from spine_contracts import (
    AddCredits,
    CancelExecution,
    CreateUser,
    CreditsAdded,
    CreditsRejected,
    CreditsReserved,
    CreditsSettled,
    FlowDefinition,
    FlowNode,
    GatewayReply,
    Message,
    ReservationWithdrawn,
    ReserveCredits,
    SettleCredits,
    StartExecution,
    UserCreated,
    WithdrawReservation,
    topics,
)
from spine_servicekit.kafka import (
    REPLY_TO_HEADER,
    KafkaConfig,
    Outgoing,
    make_producer,
    send_all,
)
from spine_servicekit.projector import Projector, wait_for_stored_offsets
from spine_servicekit.txloop import TransactionalLoop
from support import TopicTail, fresh_topics, log_tail, spawn, stop

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SPECS = (
    topics.AUTH_COMMANDS,
    topics.AUTH_EVENTS,
    topics.EXECUTION_COMMANDS,
    topics.GATEWAY_REPLIES,
    topics.DEADLETTER,
)
FLOW = FlowDefinition(flow_id="echo_flow", nodes=(FlowNode(id="echo", agent_id="echo"),))
TRACE = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"


# -- helpers -----------------------------------------------------------------------------------


def key_hash() -> str:
    return uuid.uuid4().hex * 2


class Gateway:
    """Plays one gateway replica: commands go out keyed by user_id with its reply-to."""

    def __init__(self, cfg: KafkaConfig, name: str) -> None:
        self.name = name
        self._topic = cfg.topic(topics.AUTH_COMMANDS)
        self._producer = make_producer(cfg, linger_ms=2)

    async def __aenter__(self) -> Gateway:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, *commands: Message) -> None:
        await send_all(
            self._producer,
            [
                Outgoing(self._topic, c.data.user_id, c, reply_to=self.name)  # type: ignore[attr-defined]
                for c in commands
            ],
        )


@dataclasses.dataclass
class Auth:
    """The auth handler on a TransactionalLoop, in this process; restartable."""

    cfg: KafkaConfig
    handler: AuthHandler | None = None
    loop: TransactionalLoop | None = None
    task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        count = await check_co_partitioned(self.cfg)
        self.handler = AuthHandler(self.cfg, partition_count=count)
        self.loop = make_loop(self.cfg, self.handler)
        await self.loop.start()
        self.task = asyncio.create_task(self.loop.run())

    async def stop(self) -> None:
        if self.loop is not None:
            await self.loop.stop()
        if self.task is not None:
            await self.task
        self.loop = self.task = None


def create_user(user_id: str, credits: int) -> CreateUser:
    return CreateUser.build(
        user_id=user_id,
        email=f"{user_id}@example.com",
        name="Test",
        credits=credits,
        key_hash=key_hash(),
        request_id=f"create-{user_id}",
    )


def reserve(user_id: str, execution_id: str, amount: int = 1) -> ReserveCredits:
    return ReserveCredits.build(
        correlation_id=f"corr-{execution_id}",
        trace=TRACE,
        user_id=user_id,
        execution_id=execution_id,
        amount=amount,
        flow=FLOW,
        flow_version=FLOW.content_hash(),
        input_data={"message": "hi"},
        metadata={"source": "test"},
        request_id=f"reserve-{execution_id}",
    )


def settle(
    user_id: str, execution_id: str, outcome: str, charge: int, tokens: tuple[int, int] = (0, 0)
) -> SettleCredits:
    return SettleCredits.build(
        user_id=user_id,
        execution_id=execution_id,
        outcome=outcome,
        charge=charge,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
    )


def replies(tail: TopicTail, *request_ids: str) -> Callable[[TopicTail], bool]:
    wanted = set(request_ids)
    return lambda t: wanted <= {m.data.request_id for m in t.of(GatewayReply)}


def reply(tail: TopicTail, request_id: str) -> GatewayReply:
    (found,) = tail.of(GatewayReply, request_id=request_id)
    return found


async def read_model(database_url: str, schema: str, user_id: str) -> tuple[Any, list[Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        user = await conn.fetchrow(f'SELECT * FROM "{schema}".users WHERE user_id = $1', user_id)
        movements = await conn.fetch(
            f'SELECT * FROM "{schema}".credit_movements WHERE user_id = $1 ORDER BY occurred_at',
            user_id,
        )
    finally:
        await conn.close()
    return user, list(movements)


async def caught_up(projector: Projector, events: TopicTail) -> None:
    ends = await events.end_offsets()
    async with asyncio.timeout(30):
        await projector.wait_for_offsets(ends)


# -- fixtures ----------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def cfg(kafka: KafkaConfig) -> KafkaConfig:
    return await fresh_topics(kafka, SPECS)


@pytest_asyncio.fixture(loop_scope="session")
async def auth(cfg: KafkaConfig) -> AsyncIterator[Auth]:
    service = Auth(cfg)
    await service.start()
    yield service
    await service.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def projector(
    cfg: KafkaConfig, database_url: str, pg_schema: str
) -> AsyncIterator[Projector]:
    async with Projector(cfg, database_url, auth_projection(), schema=pg_schema) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(cfg: KafkaConfig) -> AsyncIterator[Gateway]:
    async with Gateway(cfg, "gw-a") as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="session")
async def tails(cfg: KafkaConfig) -> AsyncIterator[tuple[TopicTail, TopicTail, TopicTail]]:
    """(auth events, execution commands, gateway replies)."""
    async with (
        TopicTail(cfg, topics.AUTH_EVENTS) as events,
        TopicTail(cfg, topics.EXECUTION_COMMANDS) as executions,
        TopicTail(cfg, topics.GATEWAY_REPLIES) as gateway_replies,
    ):
        yield events, executions, gateway_replies


# -- tests -------------------------------------------------------------------------------------


async def test_reserve_starts_the_execution_and_answers_the_gateway(
    auth: Auth,
    gateway: Gateway,
    tails: tuple[TopicTail, TopicTail, TopicTail],
    projector: Projector,
    database_url: str,
    pg_schema: str,
) -> None:
    events, executions, answers = tails
    command = reserve("ada", "exec-1", amount=1)
    await gateway.send(create_user("ada", 3), command)
    await answers.until(replies(answers, "create-ada", "reserve-exec-1"))

    created = reply(answers, "create-ada")
    assert created.data.ok and created.data.body["balance"] == 3
    reserved = reply(answers, "reserve-exec-1")
    assert reserved.data.ok and reserved.data.body["status"] == "reserved"
    assert reserved.data.body["balance"] == 2 and reserved.data.body["execution_id"] == "exec-1"
    for record in answers.records:
        assert record.key == b"gw-a"
        assert dict(record.headers)[REPLY_TO_HEADER] == b"gw-a"

    await executions.until(lambda t: len(t.of(StartExecution)) == 1)
    (start,) = executions.of(StartExecution)
    assert executions.records[0].key == b"exec-1"
    assert start.data.execution_id == "exec-1" and start.data.user_id == "ada"
    assert start.data.flow == FLOW and start.data.credits_reserved == 1
    assert start.data.input_data == {"message": "hi"} and start.data.metadata == {"source": "test"}
    assert start.correlation_id == "corr-exec-1" and start.trace == TRACE
    assert start.causation_id == str(command.message_id) and start.tenant_id == "ada"

    await events.until(lambda t: len(t.messages) == 2)
    assert [type(m) for m in events.messages] == [UserCreated, CreditsReserved]
    assert {r.key for r in events.records} == {b"ada"}

    await caught_up(projector, events)
    user, movements = await read_model(database_url, pg_schema, "ada")
    assert user["balance"] == 2 and user["email"] == "ada@example.com"
    assert user["key_hash"] == events.of(UserCreated)[0].data.key_hash
    assert [(m["kind"], m["amount"], m["balance"]) for m in movements] == [
        ("created", 3, 3),
        ("reserved", -1, 2),
    ]


async def test_200_concurrent_reservations_on_10_credits_grant_exactly_10(
    auth: Auth,
    cfg: KafkaConfig,
    tails: tuple[TopicTail, TopicTail, TopicTail],
    projector: Projector,
    database_url: str,
    pg_schema: str,
) -> None:
    events, executions, answers = tails
    async with Gateway(cfg, "gw-setup") as setup:
        await setup.send(create_user("bob", 10))
        await answers.until(replies(answers, "create-bob"))

    gateways = [Gateway(cfg, f"gw-{i}") for i in range(4)]
    ids = [f"run-{i:03d}" for i in range(200)]
    for gw in gateways:
        await gw.__aenter__()
    try:
        # four gateway replicas, 50 requests each, all in flight at once
        await asyncio.gather(
            *(gw.send(*(reserve("bob", e) for e in ids[i::4])) for i, gw in enumerate(gateways))
        )
        await answers.until(replies(answers, *(f"reserve-{e}" for e in ids)), within=60)
    finally:
        for gw in gateways:
            await gw.__aexit__(None, None, None)

    outcomes = [reply(answers, f"reserve-{e}") for e in ids]
    assert sum(r.data.ok for r in outcomes) == 10
    refused = [r for r in outcomes if not r.data.ok]
    assert len(refused) == 190
    assert {r.data.error_code for r in refused} == {ErrorCode.INSUFFICIENT_CREDITS}
    assert {r.data.message for r in refused} == {"insufficient credits: balance 0, cost 1"}
    for i, record in enumerate(answers.records):  # each answer went to the replica that asked
        message = answers.messages[i]
        assert isinstance(message, GatewayReply)
        if message.data.request_id.startswith("reserve-run-"):
            n = int(message.data.request_id.rsplit("-", 1)[1])
            assert record.key == f"gw-{n % 4}".encode()

    await events.until(lambda t: len(t.of(CreditsRejected)) == 190)
    granted = {m.data.execution_id for m in events.of(CreditsReserved)}
    assert len(granted) == 10 and min(m.data.balance for m in events.of(CreditsReserved)) == 0
    await executions.until(lambda t: len(t.of(StartExecution)) == 10)
    assert {m.data.execution_id for m in executions.of(StartExecution)} == granted
    assert {r.data.body["execution_id"] for r in outcomes if r.data.ok} == granted

    await caught_up(projector, events)
    user, movements = await read_model(database_url, pg_schema, "bob")
    assert user["balance"] == 0
    assert Counter(m["kind"] for m in movements) == {"created": 1, "reserved": 10, "rejected": 190}
    assert sum(m["amount"] for m in movements) == 0


async def test_settling_charges_per_outcome_and_never_twice(
    auth: Auth,
    gateway: Gateway,
    tails: tuple[TopicTail, TopicTail, TopicTail],
    projector: Projector,
    database_url: str,
    pg_schema: str,
) -> None:
    events, _, answers = tails
    runs = ["done", "broken", "stopped-late", "stopped-early"]
    await gateway.send(create_user("cy", 10), *(reserve("cy", e, amount=2) for e in runs))
    await answers.until(replies(answers, *(f"reserve-{e}" for e in runs)))
    assert all(reply(answers, f"reserve-{e}").data.ok for e in runs)

    # what the orchestrator's credit_charge sends: completed pays (here base and tokens,
    # more than was reserved), failed pays only its tokens, cancelled pays only when an
    # agent already delivered work
    settles = [
        settle("cy", "done", "completed", 3, tokens=(1500, 500)),
        settle("cy", "broken", "failed", 1, tokens=(200, 0)),
        settle("cy", "stopped-late", "cancelled", 2),
        settle("cy", "stopped-early", "cancelled", 0),
    ]
    await gateway.send(*settles, *settles)  # every settle twice
    await gateway.send(AddCredits.build(user_id="cy", credits=1, request_id="add-cy"))
    await answers.until(replies(answers, "add-cy"))  # behind every settle on the partition
    await events.until(lambda t: len(t.of(CreditsAdded)) == 1)

    settled = {m.data.execution_id: m.data for m in events.of(CreditsSettled)}
    assert len(events.of(CreditsSettled)) == 4
    assert {e: (d.outcome, d.charged, d.refunded, d.overshoot) for e, d in settled.items()} == {
        "done": ("completed", 2, 0, 1),  # never charged past the reservation
        "broken": ("failed", 1, 1, 0),
        "stopped-late": ("cancelled", 2, 0, 0),
        "stopped-early": ("cancelled", 0, 2, 0),
    }
    assert (settled["done"].input_tokens, settled["done"].output_tokens) == (1500, 500)
    assert reply(answers, "add-cy").data.body["balance"] == 10 - 5 + 1

    await caught_up(projector, events)
    user, movements = await read_model(database_url, pg_schema, "cy")
    assert user["balance"] == 6
    assert (user["input_tokens"], user["output_tokens"]) == (1700, 500)  # each settle once
    done = [m for m in movements if m["kind"] == "settled"]
    assert sum(m["charged"] for m in done) == 5
    assert sum(m["overshoot"] for m in done) == 1
    assert sum(m["input_tokens"] for m in done) == 1700
    assert sum(m["amount"] for m in movements) == 6


async def test_withdraw_refunds_and_cancels_the_execution(
    auth: Auth,
    gateway: Gateway,
    tails: tuple[TopicTail, TopicTail, TopicTail],
) -> None:
    events, executions, answers = tails
    await gateway.send(create_user("dee", 2), reserve("dee", "slow", amount=2))
    withdraw = WithdrawReservation.build(user_id="dee", execution_id="slow", request_id="w-slow")
    await gateway.send(withdraw, settle("dee", "slow", "cancelled", 2))
    await gateway.send(reserve("dee", "slow", amount=2))  # an SDK retry with the same id
    await answers.until(lambda t: len(t.of(GatewayReply, request_id="reserve-slow")) == 2)

    answer = reply(answers, "w-slow")
    assert answer.data.ok and answer.data.body["status"] == "withdrawn"
    assert answer.data.body["refunded"] == 2 and answer.data.body["balance"] == 2
    first, retried = answers.of(GatewayReply, request_id="reserve-slow")
    assert first.data.ok and not retried.data.ok
    assert retried.data.error_code == ErrorCode.RESERVATION_WITHDRAWN

    await executions.until(lambda t: len(t.of(CancelExecution)) == 1)
    (cancel,) = executions.of(CancelExecution)
    assert cancel.data.execution_id == "slow" and cancel.data.reason == WITHDRAW_REASON
    assert len(executions.of(StartExecution, execution_id="slow")) == 1
    await events.until(lambda t: len(t.messages) == 3)
    assert [type(m) for m in events.messages] == [
        UserCreated,
        CreditsReserved,
        ReservationWithdrawn,
    ]  # the late settle after the withdrawal charged nothing


async def test_a_restarted_loop_rebuilds_balances_from_the_events(
    cfg: KafkaConfig,
    gateway: Gateway,
    tails: tuple[TopicTail, TopicTail, TopicTail],
    projector: Projector,
    database_url: str,
    pg_schema: str,
) -> None:
    events, executions, answers = tails
    first = Auth(cfg)
    await first.start()
    try:
        await gateway.send(create_user("eve", 5), *(reserve("eve", f"a{i}") for i in range(3)))
        await gateway.send(create_user("fay", 1))  # another user, maybe another partition
        await answers.until(replies(answers, "create-fay", "reserve-a2"))
        assert first.handler is not None
        before = {u: first.handler.account(u) for u in ("eve", "fay")}
    finally:
        await first.stop()

    second = Auth(cfg)
    await second.start()
    try:
        await gateway.send(*(reserve("eve", f"b{i}") for i in range(3)), reserve("fay", "c0", 2))
        await answers.until(replies(answers, "reserve-b2", "reserve-c0"))
        # the new instance saw the balances left by the first one
        assert [reply(answers, f"reserve-b{i}").data.ok for i in range(3)] == [True, True, False]
        assert (
            reply(answers, "reserve-c0").data.message == "insufficient credits: balance 1, cost 2"
        )
        # and its accounts are the fold of the log, as the first instance's were
        await events.until(lambda t: len(t.messages) == 9)  # eve 4 + fay 1, then 3 + 1
        assert second.handler is not None
        for user_id in ("eve", "fay"):
            folded = reduce(evolve, events.keyed(user_id), None)
            assert second.handler.account(user_id) == folded
            assert before[user_id] is not None
        eve = second.handler.account("eve")
        assert eve is not None and eve.balance == 0 and eve.held == 5
        assert before["eve"] is not None and before["eve"].balance == 2
    finally:
        await second.stop()

    await executions.until(lambda t: len(t.of(StartExecution)) == 5)
    await caught_up(projector, events)
    for user_id, balance in (("eve", 0), ("fay", 1)):
        user, movements = await read_model(database_url, pg_schema, user_id)
        assert user["balance"] == balance
        assert sum(m["amount"] for m in movements) == balance


async def test_the_service_process_decides_and_projects(
    kafka: KafkaConfig,
    child_env: dict[str, str],
    database_url: str,
    pg_schema: str,
    tmp_path: Path,
) -> None:
    env = {**child_env, "SPINE_AUTH_SCHEMA": pg_schema}
    log_path = tmp_path / "auth.log"
    process = await spawn(sys.executable, "-m", "spine_auth", env=env, log=log_path)
    try:
        async with (
            Gateway(kafka, "gw-proc") as gw,
            TopicTail(kafka, topics.GATEWAY_REPLIES) as answers,
            TopicTail(kafka, topics.AUTH_EVENTS) as events,
        ):
            await gw.send(create_user("gus", 4), reserve("gus", "p-1", 3))
            await answers.until(replies(answers, "reserve-p-1"), within=90)
            assert reply(answers, "reserve-p-1").data.body["balance"] == 1
            await events.until(lambda t: len(t.messages) == 2)
            ends = await events.end_offsets()
        async with asyncio.timeout(60):
            await wait_for_stored_offsets(
                database_url,
                pg_schema,
                "auth",
                lambda stored: all(stored.get(tp, 0) >= end for tp, end in ends.items()),
            )
        user, _ = await read_model(database_url, pg_schema, "gus")
        assert user is not None and user["balance"] == 1
    finally:
        code = await stop(process)
    assert code == 0, log_tail(log_path)


@pytest.mark.slow
async def test_a_killed_process_neither_loses_nor_doubles_a_decision(
    kafka: KafkaConfig,
    child_env: dict[str, str],
    database_url: str,
    pg_schema: str,
    tmp_path: Path,
) -> None:
    # small transactions, so the kill lands while commands are still being decided
    env = {**child_env, "SPINE_AUTH_SCHEMA": pg_schema, "SPINE_AUTH_MAX_BATCH": "5"}
    ids = [f"k-{i:03d}" for i in range(400)]

    def life(n: int) -> Awaitable[asyncio.subprocess.Process]:
        return spawn(sys.executable, "-m", "spine_auth", env=env, log=tmp_path / f"auth-{n}.log")

    first = await life(1)
    second: asyncio.subprocess.Process | None = None
    try:
        async with (
            Gateway(kafka, "gw-kill") as gw,
            TopicTail(kafka, topics.GATEWAY_REPLIES) as answers,
            TopicTail(kafka, topics.AUTH_EVENTS) as events,
            TopicTail(kafka, topics.EXECUTION_COMMANDS) as executions,
        ):
            await gw.send(create_user("hal", 150), *(reserve("hal", e) for e in ids))
            await answers.until(lambda t: bool(t.of(GatewayReply, request_id="reserve-k-000")), 90)
            first.kill()
            await first.wait()
            decided = len(answers.of(GatewayReply))
            second = await life(2)
            await answers.until(replies(answers, *(f"reserve-{e}" for e in ids)), within=120)

            per_request = Counter(m.data.request_id for m in answers.of(GatewayReply))
            assert set(per_request.values()) == {1}, "a committed decision was repeated"
            assert decided < len(per_request), "the kill came after every decision"
            outcomes = [reply(answers, f"reserve-{e}").data.ok for e in ids]
            assert outcomes == [True] * 150 + [False] * 250  # in order, on one partition
            await events.until(lambda t: len(t.of(CreditsRejected, user_id="hal")) == 250)
            assert len(events.of(CreditsReserved, user_id="hal")) == 150
            await executions.until(lambda t: len(t.of(StartExecution, user_id="hal")) == 150)
            started = Counter(m.data.execution_id for m in executions.of(StartExecution))
            assert set(started.values()) == {1}
            ends = await events.end_offsets()
        async with asyncio.timeout(60):
            await wait_for_stored_offsets(
                database_url,
                pg_schema,
                "auth",
                lambda stored: all(stored.get(tp, 0) >= end for tp, end in ends.items()),
            )
        user, movements = await read_model(database_url, pg_schema, "hal")
        assert user["balance"] == 0
        assert Counter(m["kind"] for m in movements) == {
            "created": 1,
            "reserved": 150,
            "rejected": 250,
        }
    finally:
        await asyncio.gather(*(stop(p) for p in (first, second) if p is not None))
    assert second is not None and second.returncode == 0, log_tail(tmp_path / "auth-2.log")
