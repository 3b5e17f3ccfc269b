"""The auth PartitionHandler with an in-memory history: routing of every output, rebuilds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
from spine_auth.domain import UserAccount, decide
from spine_auth.handlers import AuthHandler, partition_for
from spine_contracts import (
    AddCredits,
    CancelExecution,
    CreateUser,
    CreditsReserved,
    FlowDefinition,
    FlowNode,
    GatewayReply,
    Message,
    ReservationWithdrawn,
    ReserveCredits,
    StartExecution,
    WithdrawReservation,
    topics,
)
from spine_kafka.security import KafkaSecurity
from spine_servicekit.kafka import REPLY_TO_HEADER, KafkaConfig
from spine_servicekit.txloop import Incoming, PoisonMessage

CFG = KafkaConfig(bootstrap_servers="unused:9092", prefix="p.", security=KafkaSecurity())
PARTITIONS = 2
FLOW = FlowDefinition(flow_id="f", nodes=(FlowNode(id="n", agent_id="echo"),))
EVENTS = CFG.topic(topics.AUTH_EVENTS)
EXECUTIONS = CFG.topic(topics.EXECUTION_COMMANDS)
REPLIES = CFG.topic(topics.GATEWAY_REPLIES)


def user_on(partition: int) -> str:
    return next(
        f"user-{i}" for i in range(1000) if partition_for(f"user-{i}", PARTITIONS) == partition
    )


def create(user_id: str, credits: int = 2) -> CreateUser:
    return CreateUser.build(
        user_id=user_id,
        email=f"{user_id}@x.io",
        credits=credits,
        key_hash="a" * 64,
        request_id=f"req-{user_id}",
    )


def reserve(user_id: str, execution_id: str) -> ReserveCredits:
    return ReserveCredits.build(
        user_id=user_id,
        execution_id=execution_id,
        amount=1,
        flow=FLOW,
        flow_version="v1",
        request_id=f"req-{execution_id}",
    )


def incoming(
    message: Message, partition: int, *, key: str | None = None, reply_to: str | None = "gw-1"
) -> Incoming:
    headers = ((REPLY_TO_HEADER, reply_to.encode()),) if reply_to else ()
    return Incoming(
        topic=CFG.topic(topics.AUTH_COMMANDS),
        partition=partition,
        offset=0,
        key=key if key is not None else message.data.user_id,  # type: ignore[attr-defined]
        timestamp_ms=0,
        message=message,
        headers=headers,
    )


class History:
    """Auth events per partition, served the way the Kafka reader does (in batches)."""

    def __init__(self) -> None:
        self.events: dict[int, list[Message]] = {}

    async def __call__(self, partition: int) -> AsyncIterator[Sequence[Message]]:
        events = self.events.get(partition, [])
        for i in range(0, len(events), 2):
            yield events[i : i + 2]


async def test_outputs_go_to_their_topics_with_their_keys_and_the_reply_to_header() -> None:
    handler = AuthHandler(CFG, partition_count=PARTITIONS, history=History())
    uid = user_on(1)
    await handler.on_assigned(1)
    out = await handler.handle(
        1, [incoming(create(uid), 1), incoming(reserve(uid, "e1"), 1, reply_to="gw-2")]
    )
    routed = [(o.topic, o.key, type(o.message).__name__, o.reply_to) for o in out]
    assert routed == [
        (EVENTS, uid, "UserCreated", None),
        (REPLIES, "gw-1", "GatewayReply", "gw-1"),
        (EVENTS, uid, "CreditsReserved", None),
        (EXECUTIONS, "e1", "StartExecution", None),
        (REPLIES, "gw-2", "GatewayReply", "gw-2"),
    ]
    assert dict(out[4].encode()[2])[REPLY_TO_HEADER] == b"gw-2"
    account = handler.account(uid)
    assert account is not None and account.balance == 1

    out = await handler.handle(
        1,
        [
            incoming(
                WithdrawReservation.build(user_id=uid, execution_id="e1", request_id="w1"),
                1,
                reply_to=None,
            )
        ],
    )
    assert [(o.topic, o.key, type(o.message)) for o in out] == [
        (EVENTS, uid, ReservationWithdrawn),
        (EXECUTIONS, "e1", CancelExecution),
    ]  # no reply-to header: nobody to answer


async def test_accounts_are_rebuilt_from_the_partition_history() -> None:
    history = History()
    uid = user_on(0)
    state: UserAccount | None = None
    for command in (create(uid, 3), reserve(uid, "e1"), reserve(uid, "e2")):
        decision = decide(state, command)
        state = decision.state
        history.events.setdefault(0, []).extend(decision.events)
    handler = AuthHandler(CFG, partition_count=PARTITIONS, history=history)
    await handler.on_assigned(0)
    assert handler.account(uid) == state
    out = await handler.handle(0, [incoming(reserve(uid, "e2"), 0)])  # a repeat: answer only
    assert [type(o.message) for o in out] == [GatewayReply]
    out = await handler.handle(0, [incoming(reserve(uid, "e3"), 0)])
    assert [type(o.message) for o in out][:2] == [CreditsReserved, StartExecution]
    await handler.on_revoked(0)
    assert handler.account(uid) is None and handler.partitions == []


@pytest.mark.parametrize("case", ["wrong_key", "wrong_partition", "not_a_command"])
async def test_misrouted_or_foreign_messages_are_poison_and_change_nothing(case: str) -> None:
    handler = AuthHandler(CFG, partition_count=PARTITIONS, history=History())
    uid = user_on(0)
    await handler.on_assigned(0)
    await handler.on_assigned(1)
    if case == "wrong_key":
        bad = incoming(create(uid), 0, key="someone-else")
    elif case == "wrong_partition":
        bad = incoming(create(uid), 1)
    else:
        bad = incoming(
            StartExecution.build(execution_id="e", user_id=uid, flow=FLOW, flow_version="v"),
            0,
            key=uid,
        )
    with pytest.raises(PoisonMessage):
        await handler.handle(bad.partition, [bad])
    assert handler.account(uid) is None


async def test_without_a_partition_count_only_the_key_is_checked() -> None:
    handler = AuthHandler(CFG, history=History())
    uid = user_on(0)
    out = await handler.handle(1, [incoming(create(uid), 1)])
    assert len(out) == 2
    out = await handler.handle(1, [incoming(AddCredits.build(user_id=uid, credits=1), 1)])
    assert [o.topic for o in out] == [EVENTS]
