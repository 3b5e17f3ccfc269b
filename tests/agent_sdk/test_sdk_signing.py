"""The SDK signs everything an agent publishes — registration, heartbeats, results — with
the agent's key, over the record as it lands on the topic (real Kafka)."""

from __future__ import annotations

import pytest
from spine_agent import Agent, AgentInfo, Task
from spine_agent.testing import TopicReader, publish_tasks, serving, task_message
from spine_contracts import AgentResult, topics
from spine_contracts.signing import Signer, check, topic_base
from spine_servicekit.kafka import KafkaConfig
from support import TopicTail, fresh_topics

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_registration_heartbeats_and_results_carry_the_agents_signature(
    kafka: KafkaConfig,
) -> None:
    cfg = await fresh_topics(kafka, agents=["sdk-signs"])
    signer = Signer.generate()
    agent = Agent(AgentInfo(agent_id="sdk-signs"), signer=signer)

    @agent.handler
    async def handle(task: Task) -> dict[str, object]:
        return {"echo": task.input}

    task = task_message("sdk-signs", input={"x": 1})
    async with TopicReader(cfg, cfg.topic(topics.AGENT_RESULTS)) as results:
        async with serving(agent, cfg, heartbeat_interval=0.2):
            await publish_tasks(cfg, "sdk-signs", task)
            await results.wait_for(lambda m: isinstance(m, AgentResult), within=30)
    for spec in (topics.REGISTRY_COMMANDS, topics.REGISTRY_HEARTBEATS, topics.AGENT_RESULTS):
        async with TopicTail(cfg, spec) as tail:
            await tail.to_end()
        assert tail.records, spec.base
        for record in tail.records:
            headers = [(k, bytes(v)) for k, v in record.headers]
            base = topic_base(record.topic, cfg.prefix)
            assert base == spec.base
            value = record.value or b""
            assert check(headers, base, record.key, value, signer.public_key) is None
            other = Signer.generate().public_key
            assert check(headers, base, record.key, value, other) == "wrong_key"
