"""The flow catalogue's single writer on real Kafka: writers racing for one flow id — a flow
file against a user's API create, two users creating — get exactly one ``FlowDefined``;
the loser is refused (answered on the gateway's replies, audited on ``spine.audit``), also
by a writer rebuilt from ``spine.flows`` after a restart; and the flow-file loader goes
through the writer."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from spine_contracts import (
    AuditRecorded,
    DefineFlow,
    FlowDefined,
    FlowDefinition,
    FlowDeleted,
    FlowNode,
    GatewayReply,
    Message,
    to_bytes,
    topics,
)
from spine_flows import flow_version
from spine_orchestrator.flow_loader import FlowLoader
from spine_orchestrator.flow_writer import FlowWriter, make_flow_writer_loop
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import KafkaConfig, headers_for, make_producer
from support import TopicTail, fresh_topics

pytestmark = pytest.mark.integration

TOPICS = [
    topics.FLOWS,
    topics.FLOW_COMMANDS,
    topics.AUDIT,
    topics.GATEWAY_REPLIES,
    topics.DEADLETTER,
]
REPLICA = "gw-test-replica"


def definition(flow_id: str, name: str) -> FlowDefinition:
    return FlowDefinition(flow_id=flow_id, name=name, nodes=(FlowNode(id="a", agent_id="echo"),))


def api_create(flow_id: str, user: str) -> DefineFlow:
    flow = definition(flow_id, f"by {user}")
    return DefineFlow.build(
        actor=f"key_{user}",
        flow_id=flow_id,
        flow_version=flow_version(flow),
        definition=flow,
        owner=user,
        source="api",
        mode="create",
        request_id=f"{flow_id}-{user}",
    )


def file_define(flow_id: str) -> DefineFlow:
    flow = definition(flow_id, "from a file")
    return DefineFlow.build(
        actor="orchestrator",
        flow_id=flow_id,
        flow_version=flow_version(flow),
        definition=flow,
        owner="system",
        source="file",
        source_path=f"/flows/{flow_id}.yaml",
        mode="replace",
    )


@asynccontextmanager
async def writer(cfg: KafkaConfig) -> AsyncIterator[FlowWriter]:
    """The writer's loop as the orchestrator runs it; each use is a new life."""
    handler = FlowWriter(cfg)
    async with make_flow_writer_loop(cfg, handler):
        yield handler


@asynccontextmanager
async def producers(n: int, cfg: KafkaConfig) -> AsyncIterator[list[AIOKafkaProducer]]:
    started = [make_producer(cfg) for _ in range(n)]
    for p in started:
        await p.start()
    try:
        yield started
    finally:
        for p in started:
            await p.stop()


async def send(producer: AIOKafkaProducer, cfg: KafkaConfig, command: Message) -> None:
    """Publish as the gateway does (reply-to: its replica) or the loader does (none)."""
    request_id = getattr(command.data, "request_id", None)
    await producer.send_and_wait(
        cfg.topic(topics.FLOW_COMMANDS),
        to_bytes(command),
        key=command.data.flow_id.encode(),  # type: ignore[attr-defined]
        headers=headers_for(command, reply_to=REPLICA if request_id else None),
    )


async def race(cfg: KafkaConfig, pairs: Sequence[tuple[Message, Message]]) -> None:
    """Send each pair's two commands at once, from two producers; every other pair swaps
    producers, so whichever producer's batch lands first, both sides win some races."""
    async with producers(2, cfg) as (one, two):
        sends = []
        for i, (a, b) in enumerate(pairs):
            first, second = (one, two) if i % 2 == 0 else (two, one)
            sends += [send(first, cfg, a), send(second, cfg, b)]
        await asyncio.gather(*sends)


async def audited(cfg: KafkaConfig, count: int) -> TopicTail:
    async with TopicTail(cfg, topics.AUDIT) as tail:
        await tail.until(lambda t: len(t.messages) >= count)
        await tail.to_end()
    return tail


async def flows_log(cfg: KafkaConfig) -> TopicTail:
    async with TopicTail(cfg, topics.FLOWS) as tail:
        await tail.to_end()
    return tail


async def replies(cfg: KafkaConfig, count: int) -> dict[str, GatewayReply]:
    async with TopicTail(cfg, topics.GATEWAY_REPLIES) as tail:
        await tail.until(lambda t: len(t.messages) >= count)
        await tail.to_end()
    assert all(k == REPLICA.encode() for k in (r.key for r in tail.records))
    return {m.data.request_id: m for m in tail.of(GatewayReply)}


async def test_racing_writers_get_one_flow_each_and_a_rebuilt_writer_keeps_refusing(
    kafka: KafkaConfig,
) -> None:
    cfg = await fresh_topics(kafka, TOPICS)
    files = [f"file-vs-user-{i}" for i in range(6)]
    users = [f"user-vs-user-{i}" for i in range(6)]
    async with writer(cfg):
        await race(
            cfg,
            [(file_define(f), api_create(f, "u1")) for f in files]
            + [(api_create(f, "u1"), api_create(f, "u2")) for f in users],
        )
        audit = await audited(cfg, 2 * (len(files) + len(users)))
        answers = await replies(cfg, len(files) + 2 * len(users))

    log = await flows_log(cfg)
    for flow_id in files + users:
        (winner,) = log.of(FlowDefined, flow_id=flow_id)  # exactly one write won
        actions = sorted(a.data.action for a in audit.of(AuditRecorded, subject_id=flow_id))
        assert actions == ["flow.created", "flow.refused"], (flow_id, actions)
        (refusal,) = audit.of(AuditRecorded, subject_id=flow_id, action="flow.refused")
        assert refusal.data.owner != winner.data.owner
    for flow_id in files:
        user_answer = answers[f"{flow_id}-u1"]
        (winner,) = log.of(FlowDefined, flow_id=flow_id)
        if winner.data.owner == "system":  # the file came first: the create finds it
            assert user_answer.data.error_code == "FLOW_EXISTS"
        else:  # the user came first: the file may not take a user's id
            assert user_answer.data.ok and user_answer.data.body["created"] is True
            (refusal,) = audit.of(AuditRecorded, subject_id=flow_id, action="flow.refused")
            assert refusal.data.detail["code"] == "FLOW_ID_TAKEN"
    for flow_id in users:
        outcomes = {answers[f"{flow_id}-{u}"].data.error_code for u in ("u1", "u2")}
        assert outcomes == {None, "FLOW_EXISTS"}
        (winner,) = log.of(FlowDefined, flow_id=flow_id)
        assert answers[f"{flow_id}-{winner.data.owner}"].data.ok

    # a new life: the catalogue comes back from spine.flows alone
    async with writer(cfg) as rebuilt:
        async with producers(1, cfg) as (p,):
            for flow_id in users:
                await send(p, cfg, api_create(flow_id, "u3"))
            taken = next(
                f for f in files + users if log.of(FlowDefined, flow_id=f)[0].data.owner != "system"
            )
            await send(p, cfg, file_define(taken))
        later = await replies(cfg, len(files) + 3 * len(users))
        audit = await audited(cfg, 2 * (len(files) + len(users)) + len(users) + 1)
        catalog = rebuilt.catalog()
        assert catalog is not None and set(catalog.flows) == set(files + users)
    for flow_id in users:
        assert later[f"{flow_id}-u3"].data.error_code == "FLOW_EXISTS"
    refusals = audit.of(AuditRecorded, subject_id=taken, action="flow.refused")
    assert refusals[-1].data.detail["code"] == "FLOW_ID_TAKEN"
    again = await flows_log(cfg)
    assert len(again.of(FlowDefined)) == len(files + users)  # nothing more was written


async def test_the_flow_file_loader_writes_through_the_writer(
    kafka: KafkaConfig, tmp_path: Path
) -> None:
    cfg = await fresh_topics(kafka, TOPICS)
    flow_commands = cfg.topic(topics.FLOW_COMMANDS)
    arrived: defaultdict[tuple[str, str], asyncio.Event] = defaultdict(asyncio.Event)
    async with producers(1, cfg) as (producer,):

        async def publish(message: Message, key: str) -> None:
            await producer.send_and_wait(
                flow_commands, to_bytes(message), key=key.encode(), headers=headers_for(message)
            )

        loader = FlowLoader(tmp_path, publish)

        def observe(message: Message, record: Any) -> None:
            loader.observe(message, record)
            if isinstance(message, FlowDefined | FlowDeleted):
                arrived[(message.type, message.data.flow_id)].set()

        async def seen(kind: type[Message], flow_id: str) -> None:
            event = arrived[(kind.model_fields["type"].default, flow_id)]
            await asyncio.wait_for(event.wait(), 30)

        follower = TopicFollower(cfg, cfg.topic(topics.FLOWS), observe, name="flows")
        await follower.start()
        try:
            async with writer(cfg):
                # a user owns "theirs" already: a file with that id does not take it
                await send(producer, cfg, api_create("theirs", "u1"))
                await seen(FlowDefined, "theirs")
                for flow_id in ("mine", "theirs"):
                    (tmp_path / f"{flow_id}.yaml").write_text(
                        f"flow_id: {flow_id}\nnodes:\n  - {{id: a, agent_id: echo}}\n"
                    )
                assert await loader.scan() == 1  # "mine" only
                await seen(FlowDefined, "mine")
                (tmp_path / "mine.yaml").unlink()
                await loader.removed(tmp_path / "mine.yaml")
                await seen(FlowDeleted, "mine")
        finally:
            await follower.stop()
    log = await flows_log(cfg)
    (mine,) = log.of(FlowDefined, flow_id="mine")
    assert (mine.data.owner, mine.data.source, mine.actor) == ("system", "file", "orchestrator")
    assert mine.data.source_path == str(tmp_path / "mine.yaml")
    (deleted,) = log.of(FlowDeleted)
    assert (deleted.data.flow_id, deleted.data.owner) == ("mine", "system")
    assert [m.data.owner for m in log.of(FlowDefined, flow_id="theirs")] == ["u1"]
