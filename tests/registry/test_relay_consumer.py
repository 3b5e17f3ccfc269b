"""The relay's task consumer on the real broker: the SDK's Agent built with
``announce=False`` and a handler that calls an HTTP agent (faked at the transport).

It consumes and answers like any agent, but speaks for nobody: no ``RegisterAgent``
(which would re-register the HTTP agent as a Kafka one) and no heartbeats of its own
(the relay's probes are the agent's heartbeats).
"""

from __future__ import annotations

import random
from typing import Any

import httpx
import orjson
import pytest
from spine_agent import Agent, AgentInfo, Task
from spine_agent.testing import TopicReader, publish_tasks, serving, task_message
from spine_contracts import AgentResult, topics
from spine_registry.relay.delivery import RetryPolicy, deliver
from spine_servicekit.kafka import KafkaConfig, ensure_topics
from support import TopicTail

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

AGENT_ID = "relay-http-agent"


def fake_agent(request: httpx.Request) -> httpx.Response:
    body = orjson.loads(request.content)
    config = body["config"]
    if config.get("status"):
        return httpx.Response(config["status"], text="agent exploded")
    return httpx.Response(
        200,
        json={
            "status": "success",
            "output": {"message": f"hi {body['input']['user_message']}", "data": {}},
            "execution_id": body["execution_id"],
        },
    )


async def test_relay_consumer_answers_without_announcing_itself(kafka: KafkaConfig) -> None:
    await ensure_topics(kafka, (), agent_ids=[AGENT_ID])
    info = AgentInfo(agent_id=AGENT_ID, transport="http", endpoint="http://agent.test")
    agent = Agent(info, concurrency=4, drain_timeout=5, announce=False)
    policy = RetryPolicy(max_retries=1, backoff_s=0.01, max_backoff_s=0.01)

    async with httpx.AsyncClient(transport=httpx.MockTransport(fake_agent)) as client:

        @agent.handler
        async def handle(task: Task) -> dict[str, Any]:
            return await deliver(client, "http://agent.test", task, policy, rng=random.Random(1))

        ok = task_message(AGENT_ID, node_id="ok", input={"user_message": "Ana"})
        bad = task_message(AGENT_ID, node_id="bad", config={"status": 502})
        async with (
            TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
            serving(agent, kafka, heartbeat_interval=0.2),
        ):
            await publish_tasks(kafka, AGENT_ID, ok, bad)
            ids = {ok.data.execution_id, bad.data.execution_id}
            found = await results.wait_for(
                lambda m: isinstance(m, AgentResult) and m.data.execution_id in ids, count=2
            )
    by_node = {r.data.node_id: r.data for r in found}
    assert by_node["ok"].status == "success"
    assert by_node["ok"].output["message"] == "hi Ana"
    assert by_node["ok"].agent_id == AGENT_ID
    assert by_node["bad"].status == "error"
    assert by_node["bad"].error_message == (
        "HTTP 502 from http://agent.test/execute: agent exploded (after 2 attempts)"
    )

    for spec in (topics.REGISTRY_COMMANDS, topics.REGISTRY_HEARTBEATS):
        # the agent has stopped: whatever it published is before the end, all of it read
        async with TopicTail(kafka, spec) as tail:
            await tail.to_end()
            mine = tail.keyed(AGENT_ID)
        assert mine == [], f"{spec.name()}: the relay's consumer announced itself: {mine}"
