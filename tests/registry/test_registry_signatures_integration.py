"""The registry takes an agent's own registration and its heartbeats only with the
signature of the key ``spine-admin`` issued (real Kafka and PostgreSQL): unsigned, from
another agent's key, tampered with, or from an agent never issued, they change nothing,
are dead-lettered with the reason and counted; an agent's own registration sets neither
its owner nor its key; the operator's IssueAgent cannot hand an id to another owner, and
RevokeAgentKey takes the agent out at once."""

from __future__ import annotations

import pytest
from crash.helpers import dead_letters, origin_of, publish_raw, registry_service
from prometheus_client import REGISTRY
from spine_contracts import (
    AgentHeartbeat,
    AgentInfo,
    AgentRegistered,
    AgentStatusChanged,
    AuditRecorded,
    Message,
    RegisterAgent,
    RevokeAgentKey,
    to_bytes,
    topics,
)
from spine_servicekit.kafka import KafkaConfig
from support import TopicTail, fresh_topics, issue_agent, signed, signer_of

pytestmark = pytest.mark.integration


def failures(reason: str) -> float:
    labels = {"consumer": "registry", "reason": reason}
    return REGISTRY.get_sample_value("spine_signature_failures_total", labels) or 0.0


def tampered(item: tuple[str, Message, list[tuple[str, bytes]]]) -> tuple[str, bytes, list]:  # type: ignore[type-arg]
    """The signed record with one byte of its value changed (the signature stays)."""
    key, message, headers = item
    return key, to_bytes(message).replace(b'"ready":true', b'"ready":false'), headers


async def test_agent_messages_need_the_issued_key(
    kafka: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    cfg = await fresh_topics(kafka)
    commands = cfg.topic(topics.REGISTRY_COMMANDS)
    beats = cfg.topic(topics.REGISTRY_HEARTBEATS)
    await issue_agent(cfg, "sig-a", owner="u7")
    await issue_agent(cfg, "sig-b")
    own = RegisterAgent.build(agent=AgentInfo(agent_id="sig-a"))
    stranger = RegisterAgent.build(agent=AgentInfo(agent_id="sig-never"))
    before = {r: failures(r) for r in ("unsigned", "unknown_key", "wrong_key", "bad_signature")}
    async with registry_service(cfg, database_url, pg_schema):
        refused = await publish_raw(
            cfg,
            commands,
            [
                ("sig-a", own, None),  # unsigned
                signed(cfg, commands, "sig-a", own, signer_of("sig-b")),  # another agent's key
                signed(cfg, commands, "sig-never", stranger, signer_of("sig-never")),
            ],
        )
        reasons = ["unsigned", "wrong_key", "unknown_key"]
        for meta, reason in zip(refused, reasons, strict=True):
            [letter] = await dead_letters(cfg, origin_of(meta))
            assert letter.data.error_type == "SignatureRefused"
            assert letter.data.error.startswith(f"{reason}:"), letter.data.error
        await publish_raw(cfg, commands, [signed(cfg, commands, "sig-a", own, signer_of("sig-a"))])
        ready = AgentHeartbeat.build(agent_id="sig-a", instance_id="i", ready=True)
        not_ready = AgentHeartbeat.build(agent_id="sig-a", instance_id="i", ready=False)
        [forged] = await publish_raw(
            cfg, beats, [tampered(signed(cfg, beats, "sig-a", ready, signer_of("sig-a")))]
        )
        [letter] = await dead_letters(cfg, origin_of(forged))
        assert letter.data.error.startswith("bad_signature:")
        # accepted, the forged beat would have recorded "not ready" before this one's "ready"
        await publish_raw(cfg, beats, [signed(cfg, beats, "sig-a", ready, signer_of("sig-a"))])
        await publish_raw(cfg, beats, [signed(cfg, beats, "sig-a", not_ready, signer_of("sig-a"))])
        async with TopicTail(cfg, topics.REGISTRY_EVENTS) as events:
            await events.until(
                lambda t: bool(t.of(AgentStatusChanged, reason="heartbeat: not ready"))
            )
            await events.to_end()
    for reason, n in {"unsigned": 1, "wrong_key": 1, "unknown_key": 1, "bad_signature": 1}.items():
        assert failures(reason) - before[reason] == n, reason
    a = [m for m in events.messages if m.data.agent.agent_id == "sig-a"]  # type: ignore[attr-defined]
    assert [(type(m).__name__, m.data.reason) for m in a] == [  # type: ignore[attr-defined]
        ("AgentStatusChanged", f"key {signer_of('sig-a').key_id} issued"),
        ("AgentRegistered", "registered: waiting for its first heartbeat"),
        ("AgentStatusChanged", "heartbeat: ready"),  # the signed beats, not the forged one
        ("AgentStatusChanged", "heartbeat: not ready"),
    ]
    registered = a[1]
    assert isinstance(registered, AgentRegistered)
    # the agent's own registration keeps the owner and the key spine-admin recorded
    assert registered.data.owner == "u7"
    assert registered.data.key_id == signer_of("sig-a").key_id
    assert not [m for m in events.messages if m.data.agent.agent_id == "sig-never"]  # type: ignore[attr-defined]


async def test_the_operator_cannot_move_an_id_and_revoking_takes_an_agent_out(
    kafka: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    cfg = await fresh_topics(kafka)
    commands = cfg.topic(topics.REGISTRY_COMMANDS)
    admin = cfg.topic(topics.REGISTRY_ADMIN)
    await issue_agent(cfg, "sig-c", owner="u1")
    own = RegisterAgent.build(agent=AgentInfo(agent_id="sig-c"))
    async with registry_service(cfg, database_url, pg_schema):
        await publish_raw(cfg, commands, [signed(cfg, commands, "sig-c", own, signer_of("sig-c"))])
        await issue_agent(cfg, "sig-c", owner="u2")  # another owner: refused
        revoke = RevokeAgentKey.build(agent_id="sig-c")
        await publish_raw(cfg, admin, [("sig-c", revoke, None)])
        async with TopicTail(cfg, topics.REGISTRY_EVENTS) as events:
            await events.until(lambda t: len(t.of(AgentStatusChanged)) >= 2)
        again = RegisterAgent.build(agent=AgentInfo(agent_id="sig-c", version="2"))
        [late] = await publish_raw(
            cfg, commands, [signed(cfg, commands, "sig-c", again, signer_of("sig-c"))]
        )
        [letter] = await dead_letters(cfg, origin_of(late))
        assert letter.data.error.startswith("unknown_key:")
        async with TopicTail(cfg, topics.AUDIT) as audit:
            await audit.until(lambda t: len(t.of(AuditRecorded)) >= 4)
    revoked = events.of(AgentStatusChanged)[-1]
    assert revoked.data.key_id is None and revoked.data.public_key is None
    assert not revoked.data.active and revoked.data.owner == "u1"
    actions = [(a.data.action, a.data.owner) for a in audit.of(AuditRecorded)]
    assert actions == [
        ("agent.key_issued", "u1"),
        ("agent.registered", "u1"),
        ("agent.refused", "u2"),
        ("agent.key_revoked", "u1"),
    ]
    refusal = audit.of(AuditRecorded)[2]
    assert refusal.actor == "spine-admin" and refusal.data.detail["code"] == "AGENT_ID_TAKEN"
