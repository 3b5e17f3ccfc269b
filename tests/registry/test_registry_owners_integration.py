"""Agent ids and their owners on real Kafka and PostgreSQL: the gateway's commands are
answered on its replies topic and audited with the change they cause, and a deregistered
agent's id stays its owner's — also for a registry restarted from the compacted log."""

from __future__ import annotations

import pytest
from crash.helpers import dead_letters, origin_of, publish_raw, registry_service
from spine_contracts import (
    AgentDeregistered,
    AgentInfo,
    AgentRegistered,
    AuditRecorded,
    DeregisterAgent,
    GatewayReply,
    Message,
    RegisterAgent,
    topics,
)
from spine_servicekit.kafka import KafkaConfig, headers_for
from support import TopicTail, fresh_topics, issue_agent, read_to_end, signed, signer_of

pytestmark = pytest.mark.integration

REPLICA = "gw-test-replica"
AGENT = "tomb"


def as_gateway(command: Message) -> tuple[str, Message, list[tuple[str, bytes]]]:
    """Keyed by the agent id, with this replica as reply-to, as the gateway's request()."""
    agent_id = getattr(command.data, "agent_id", None) or command.data.agent.agent_id  # type: ignore[attr-defined]
    return agent_id, command, headers_for(command, reply_to=REPLICA)


def register(owner: str, request_id: str) -> RegisterAgent:
    info = AgentInfo(agent_id=AGENT, transport="http", endpoint="http://tomb.invalid:8080")
    return RegisterAgent.build(actor=f"key_{owner}", agent=info, owner=owner, request_id=request_id)


async def answer(cfg: KafkaConfig, request_id: str) -> GatewayReply:
    async with TopicTail(cfg, topics.GATEWAY_REPLIES) as tail:
        await tail.until(lambda t: bool(t.of(GatewayReply, request_id=request_id)))
    (reply,) = tail.of(GatewayReply, request_id=request_id)
    return reply


async def test_a_tombstoned_agent_id_is_refused_to_another_owner(
    kafka: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    cfg = await fresh_topics(kafka)
    commands = cfg.topic(topics.REGISTRY_COMMANDS)
    requests = cfg.topic(topics.REGISTRY_REQUESTS)  # the gateway's
    async with registry_service(cfg, database_url, pg_schema):
        await publish_raw(cfg, requests, [as_gateway(register("u1", "reg-u1"))])
        created = await answer(cfg, "reg-u1")
        assert created.data.ok and created.data.body["owner"] == "u1"
        gone = DeregisterAgent.build(agent_id=AGENT, owner="u1", request_id="dereg-u1")
        await publish_raw(cfg, requests, [as_gateway(gone)])
        assert (await answer(cfg, "dereg-u1")).data.body["registered"] is False
        [taken] = await publish_raw(cfg, requests, [as_gateway(register("u2", "reg-u2"))])
        refusal = await answer(cfg, "reg-u2")
        [letter] = await dead_letters(cfg, origin_of(taken))
    assert (refusal.data.ok, refusal.data.error_code) == (False, "AGENT_ID_TAKEN")
    assert "belongs to another owner" in (refusal.data.message or "")
    assert letter.data.error_type == "RegistrationRefused"

    async with registry_service(cfg, database_url, pg_schema):  # a new life, from the log
        await publish_raw(cfg, requests, [as_gateway(register("u2", "reg-u2-again"))])
        assert (await answer(cfg, "reg-u2-again")).data.error_code == "AGENT_ID_TAKEN"
        await issue_agent(cfg, AGENT)  # keeps u1's ownership: only its key is recorded
        self_registration = RegisterAgent.build(agent=register("u2", "x").data.agent)
        await publish_raw(
            cfg, commands, [signed(cfg, commands, AGENT, self_registration, signer_of(AGENT))]
        )
        async with TopicTail(cfg, topics.REGISTRY_EVENTS) as events:
            await events.until(lambda t: len(t.of(AgentRegistered)) == 2)
            await events.to_end()

    entries = [m for m in events.messages if isinstance(m, AgentRegistered | AgentDeregistered)]
    assert [(type(m), m.data.owner) for m in entries] == [
        (AgentRegistered, "u1"),
        (AgentDeregistered, "u1"),
        (AgentRegistered, "u1"),  # the agent itself came back: still u1's
    ]
    async with TopicTail(cfg, topics.AUDIT) as audit:
        await audit.until(lambda t: len(t.messages) >= 6)
        await audit.to_end()
    records = audit.of(AuditRecorded)
    assert [(a.data.action, a.data.owner) for a in records] == [
        ("agent.registered", "u1"),
        ("agent.deregistered", "u1"),
        ("agent.refused", "u2"),
        ("agent.refused", "u2"),
        ("agent.key_issued", "u1"),
        ("agent.registered", "u1"),
    ]
    assert records[0].actor == "key_u1" and records[2].actor == "key_u2"
    assert records[0].causation_id == entries[0].causation_id  # written with its change
    assert all(r.data.subject_id == AGENT for r in records)


async def test_an_owner_is_named_only_on_the_gateways_topic(
    kafka: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    """Every agent may write ``spine.registry.commands``; an agent that puts a registration
    naming an owner there (to take another's id, or to move its endpoint) changes nothing,
    signed or not; a deregistration does not even belong on it."""
    cfg = await fresh_topics(kafka)
    commands = cfg.topic(topics.REGISTRY_COMMANDS)
    await issue_agent(cfg, AGENT)
    forged = register("system", "forged")
    gone = DeregisterAgent.build(agent_id=AGENT, owner="system")
    async with registry_service(cfg, database_url, pg_schema):
        metas = await publish_raw(
            cfg,
            commands,
            [
                as_gateway(forged),
                signed(cfg, commands, AGENT, forged, signer_of(AGENT)),
                as_gateway(gone),
            ],  # fmt: skip
        )
        letters = [(await dead_letters(cfg, origin_of(meta)))[0] for meta in metas]
        entries = await read_to_end(cfg, topics.REGISTRY_EVENTS, at_least=1)
    assert [letter.data.error_type for letter in letters] == [
        "RegistrationRefused",
        "RegistrationRefused",
        "InvalidMessage",
    ]
    assert "comes from the gateway" in letters[0].data.error
    # only the operator's IssueAgent shows; no owner, endpoint or registration was forged
    assert all(not (isinstance(e, AgentRegistered) and e.data.registered) for e in entries)
