"""The topic registry on the real broker: created as specified, and usable end to end."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from spine_contracts import ServiceHeartbeat, parse, to_bytes, topics, utcnow
from spine_servicekit.kafka import (
    KafkaConfig,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_registry_topics_exist_with_their_policies(kafka: KafkaConfig) -> None:
    admin = make_admin(kafka)
    await admin.start()
    try:
        names = [kafka.topic(spec) for spec in topics.STATIC]
        described = await admin.describe_topics(names)
        partitions = {t["topic"]: len(t["partitions"]) for t in described}
        for spec in topics.STATIC:
            assert partitions[kafka.topic(spec)] == (spec.partitions or kafka.partitions)
        resources = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        responses = await admin.describe_configs(resources)
        configs: dict[str, dict[str, str]] = {}
        for response in responses:
            for resource in response.resources:
                _, _, _, name, entries = resource[:5]
                configs[name] = {e[0]: e[1] for e in entries}
        for spec in topics.STATIC:
            config = configs[kafka.topic(spec)]
            assert config["cleanup.policy"] == spec.cleanup_policy, spec.base
            if spec.cleanup_policy == "delete":
                assert config["retention.ms"] == str(spec.retention_ms), spec.base
    finally:
        await admin.close()


async def test_ensure_topics_is_idempotent_and_creates_agent_topics(kafka: KafkaConfig) -> None:
    assert await ensure_topics(kafka) == []
    agent = f"agent{uuid.uuid4().hex[:6]}"
    created = await ensure_topics(kafka, (), agent_ids=[agent])
    assert created == [kafka.agent_tasks(agent)]
    assert await ensure_topics(kafka, (), agent_ids=[agent]) == []


async def test_publish_and_consume_through_the_registry(kafka: KafkaConfig) -> None:
    topic = kafka.topic(topics.SERVICE_HEARTBEATS)
    sent = [
        ServiceHeartbeat.build(service="probe", instance_id=f"i{i}", started_at=utcnow())
        for i in range(20)
    ]
    producer = make_producer(kafka)
    consumer = make_consumer(kafka, topic, group_id=f"probe-{uuid.uuid4().hex[:6]}")
    await producer.start()
    await consumer.start()
    try:
        for message in sent:
            await producer.send(topic, to_bytes(message), key=message.data.instance_id.encode())
        await producer.flush()
        received = []
        async with asyncio.timeout(30):
            while len(received) < len(sent):
                batches = await consumer.getmany(timeout_ms=500)
                received += [parse(r.value) for recs in batches.values() for r in recs]
        assert sorted(str(m.message_id) for m in received) == sorted(
            str(m.message_id) for m in sent
        )
        assert all(isinstance(m, ServiceHeartbeat) for m in received)
    finally:
        await consumer.stop()
        await producer.stop()
