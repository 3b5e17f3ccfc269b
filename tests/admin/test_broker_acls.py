"""The ACL table, enforced by the real secured broker (DESIGN §12, docs/security.md).

Positive controls: every service principal and an agent principal can do each thing its
table grants — write each topic it produces, read each topic it consumes in its own group,
open its transactional producers. Refusals: no credentials, a wrong password, an agent
writing the services' command topics, reading another agent's tasks or joining another
agent's group, agents ``a`` and ``a2`` — each refused by the broker, and nothing lands.
The processes themselves run as these principals in the end-to-end stack
(``tests/e2e/harness.py``), which is where a missing ACL of a real code path shows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka import TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from pydantic import SecretStr
from spine_admin import IssueError, acls, bindings, principals, scram
from spine_admin.acls import SERVICES
from spine_admin.connection import Broker
from spine_contracts import AgentInfo, topics
from spine_kafka.clients import KafkaConfig, make_consumer, make_producer
from spine_kafka.security import KafkaSecurity
from support import TEST_CREDENTIALS_DIR, issue_agent, issue_services

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WITHIN = 20.0


def _login(path: Path) -> KafkaSecurity:
    env = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_CREDENTIALS_FILE": str(path)}
    return KafkaSecurity.from_env(env)


def _as(cfg: KafkaConfig, security: KafkaSecurity) -> KafkaConfig:
    return replace(cfg, security=security, client_id="acl-probe")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def logins(kafka: KafkaConfig) -> AsyncIterator[dict[str, KafkaSecurity]]:
    """Every service principal and agents ``a``, ``a2`` of this module's namespace."""
    assert kafka.security.sasl, (
        "make test runs the secured broker: .spine/infra.env must give "
        "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT"
    )
    found = {name: _login(path) for name, path in (await issue_services(kafka)).items()}
    for agent_id in ("a", "a2"):
        issued = await issue_agent(kafka, agent_id)
        assert issued.credentials_file is not None
        assert issued.credentials_file.parent == TEST_CREDENTIALS_DIR
        assert issued.credentials_file.stat().st_mode & 0o777 == 0o600
        found[f"agent-{agent_id}"] = _login(issued.credentials_file)
    yield found


async def _write(cfg: KafkaConfig, topic: str) -> None:
    producer = make_producer(cfg)
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, b"{}", key=b"acl-probe"), WITHIN)
    finally:
        await producer.stop()


async def _read(cfg: KafkaConfig, topic: str, group: str | None) -> None:
    """Join ``group`` (or none) on ``topic`` and fetch once: what a consumer of it does."""
    consumer = make_consumer(cfg, group_id=group)
    try:
        if group is None:
            await consumer.start()
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.seek_to_beginning()
        else:
            consumer.subscribe([topic])
            await asyncio.wait_for(consumer.start(), WITHIN)
        await asyncio.wait_for(consumer.getmany(timeout_ms=200), WITHIN)
    finally:
        await consumer.stop()


async def _count(kafka: KafkaConfig, topic: str) -> int:
    """Records on ``topic``, read as the admin."""
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or {0}]
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
        return sum(ends[p] - starts[p] for p in parts)
    finally:
        await consumer.stop()


# --- positive controls: each role can do what it needs -----------------------------------


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_a_service_can_do_what_its_role_needs(
    kafka: KafkaConfig, logins: dict[str, KafkaSecurity], service: str
) -> None:
    cfg = _as(kafka, logins[service])
    role = SERVICES[service]
    for spec in role.produces:
        await _write(cfg, kafka.topic(spec))
    # a service reads in its own group where it has one, else by assignment (followers)
    group = f"{kafka.prefix}{role.groups[0]}" if role.groups else None
    for spec in role.consumes:
        await _read(cfg, kafka.topic(spec), group)
    for txid in role.transactional_ids:
        producer = make_producer(cfg, transactional_id=f"{kafka.prefix}{txid}-0")
        await asyncio.wait_for(producer.start(), WITHIN)  # InitProducerId: the ACL is checked
        await producer.stop()
    if role.writes_agent_tasks:
        await _write(cfg, kafka.agent_tasks("a"))
    if role.reads_agent_tasks:
        await _read(cfg, kafka.agent_tasks("a"), f"{kafka.prefix}agent.a")


async def test_an_agent_can_do_what_its_role_needs(
    kafka: KafkaConfig, logins: dict[str, KafkaSecurity]
) -> None:
    cfg = _as(kafka, logins["agent-a"])
    await _read(cfg, kafka.agent_tasks("a"), acls.agent_group("a", kafka.prefix))
    for spec in acls.AGENT_PRODUCES:
        await _write(cfg, kafka.topic(spec))


# --- refusals -------------------------------------------------------------------------------


async def test_a_client_without_credentials_cannot_connect(kafka: KafkaConfig) -> None:
    anonymous = replace(kafka, security=KafkaSecurity(), client_id="acl-anonymous")
    producer = make_producer(anonymous, request_timeout_ms=5000)
    with pytest.raises(KafkaError):
        await asyncio.wait_for(producer.start(), WITHIN)
    await producer.stop()


async def test_a_wrong_password_is_refused_at_login(
    kafka: KafkaConfig, logins: dict[str, KafkaSecurity]
) -> None:
    real = logins["agent-a"]
    wrong = real.model_copy(update={"sasl_password": SecretStr("not-" + uuid.uuid4().hex)})
    producer = make_producer(_as(kafka, wrong), request_timeout_ms=5000)
    with pytest.raises((KafkaConnectionError, KafkaError)):
        await asyncio.wait_for(producer.start(), WITHIN)
    await producer.stop()


@pytest.mark.parametrize(
    "spec",
    [
        topics.AUTH_COMMANDS,
        topics.EXECUTION_COMMANDS,
        topics.REGISTRY_REQUESTS,
        topics.REGISTRY_ADMIN,
        topics.DEADLETTER,
    ],
    ids=lambda s: s.base,
)
async def test_an_agent_cannot_write_the_services_topics(
    kafka: KafkaConfig, logins: dict[str, KafkaSecurity], spec: topics.TopicSpec
) -> None:
    topic = kafka.topic(spec)
    before = await _count(kafka, topic)
    with pytest.raises(TopicAuthorizationFailedError):
        await _write(_as(kafka, logins["agent-a"]), topic)
    assert await _count(kafka, topic) == before  # nothing landed, so nothing is applied


async def test_an_agent_cannot_read_another_agents_tasks_nor_join_its_group(
    kafka: KafkaConfig, logins: dict[str, KafkaSecurity]
) -> None:
    a = _as(kafka, logins["agent-a"])
    a2 = _as(kafka, logins["agent-a2"])
    # a and a2: a prefixed ACL for 'a' would have matched a2's names
    with pytest.raises(TopicAuthorizationFailedError):
        await _read(a, kafka.agent_tasks("a2"), acls.agent_group("a", kafka.prefix))
    with pytest.raises(GroupAuthorizationFailedError):
        await _read(a, kafka.agent_tasks("a"), acls.agent_group("a2", kafka.prefix))
    with pytest.raises(TopicAuthorizationFailedError):
        await _read(a2, kafka.agent_tasks("a"), acls.agent_group("a2", kafka.prefix))
    with pytest.raises(TopicAuthorizationFailedError):
        await _read(a, kafka.topic(topics.AGENT_RESULTS), None)  # results: write only
    with pytest.raises(TransactionalIdAuthorizationFailed):
        producer = make_producer(a, transactional_id=f"{kafka.prefix}orchestrator-0")
        try:
            await asyncio.wait_for(producer.start(), WITHIN)
        finally:
            await producer.stop()


async def test_an_agent_id_with_a_dot_cannot_be_issued_nor_registered(kafka: KafkaConfig) -> None:
    with pytest.raises(IssueError, match="no '.'"):
        await issue_agent(kafka, "a.b")
    with pytest.raises(ValueError):
        AgentInfo(agent_id="a.b")
    assert not (TEST_CREDENTIALS_DIR / f"{kafka.prefix}agent-a.b.json").exists()


async def test_a_revoked_agent_cannot_log_in_and_its_credential_is_replaced_not_deleted(
    kafka: KafkaConfig,
) -> None:
    issued = await issue_agent(kafka, "gone")
    assert issued.credentials_file is not None
    login = _login(issued.credentials_file)
    await _write(_as(kafka, login), kafka.topic(topics.AGENT_RESULTS))  # works before

    def revoke() -> bool:
        broker = Broker(kafka.bootstrap_servers, kafka.security)
        principals.revoke_agent_credentials(
            broker, "gone", prefix=kafka.prefix, credentials_dir=TEST_CREDENTIALS_DIR
        )
        # replaced, never deleted: a deletion in the metadata log makes Kafka 4.1.2 lose
        # every SCRAM credential at its next start (spine_admin.scram.revoke)
        return scram.exists(broker, acls.agent_principal("gone", kafka.prefix))

    assert await asyncio.to_thread(revoke)
    assert not issued.credentials_file.exists()
    producer = make_producer(_as(kafka, login), request_timeout_ms=5000)
    with pytest.raises(KafkaError):
        await asyncio.wait_for(producer.start(), WITHIN)
    await producer.stop()


async def test_grant_agents_gives_agents_issued_earlier_what_the_table_grants_now(
    kafka: KafkaConfig,
) -> None:
    """An agent issued before the progress topic existed (its WRITE taken away here) gets
    it back from ``spine-admin grant-agents``, and can write progress; a revoked agent
    stays without ACLs."""
    issued = await issue_agent(kafka, "old")
    assert issued.credentials_file is not None
    login = _as(kafka, _login(issued.credentials_file))
    progress = kafka.topic(topics.AGENT_PROGRESS)
    principal = acls.agent_principal("old", kafka.prefix)
    await issue_agent(kafka, "revoked")
    revoked = acls.agent_principal("revoked", kafka.prefix)

    def as_before_progress() -> None:
        broker = Broker(kafka.bootstrap_servers, kafka.security)
        wanted = [g.acl for g in acls.agent_grants("old", kafka.prefix)]
        bindings.apply(broker, principal, [a for a in wanted if a.name != progress])
        principals.revoke_agent_credentials(
            broker, "revoked", prefix=kafka.prefix, credentials_dir=TEST_CREDENTIALS_DIR
        )

    await asyncio.to_thread(as_before_progress)
    with pytest.raises(TopicAuthorizationFailedError):
        await _write(login, progress)

    def grant() -> tuple[list[principals.AclsReconciled], set[acls.Acl], set[acls.Acl]]:
        broker = Broker(kafka.bootstrap_servers, kafka.security)
        done = principals.grant_agents(broker, prefix=kafka.prefix)
        return done, bindings.current(broker, principal), bindings.current(broker, revoked)

    done, now, revoked_now = await asyncio.to_thread(grant)
    mine = {r.principal: r for r in done}
    assert mine[principal].acls_created == 1 and mine[principal].acls_deleted == 0
    assert revoked not in mine and revoked_now == set()
    assert now == {g.acl for g in acls.agent_grants("old", kafka.prefix)}
    await _write(login, progress)
    again = await asyncio.to_thread(grant)  # idempotent
    assert {r.principal: r.acls_created for r in again[0]}[principal] == 0
