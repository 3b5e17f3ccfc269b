"""An SDK agent as a real process: SIGTERM drains the task in flight, then exits 0."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from spine_agent.testing import TopicReader, publish_tasks, task_message, wait_caught_up
from spine_contracts import AgentHeartbeat, AgentResult, RegisterAgent, topics
from spine_servicekit.kafka import KafkaConfig

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WORKER = Path(__file__).with_name("_sdk_worker.py")
AGENT_ID = "sdk-proc"


async def test_sigterm_drains_the_task_in_flight(
    kafka: KafkaConfig, child_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**child_env, "SPINE_HEARTBEAT_INTERVAL": "0.2"}
    log = tmp_path / "agent.log"
    task = task_message(AGENT_ID, config={"delay_ms": 1000})
    execution_id = task.data.execution_id

    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        TopicReader(kafka, kafka.topic(topics.REGISTRY_COMMANDS)) as commands,
        TopicReader(kafka, kafka.topic(topics.REGISTRY_HEARTBEATS)) as beats,
    ):
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(WORKER), AGENT_ID, env=env, stdout=out, stderr=out
            )
        try:
            await commands.wait_for(
                lambda m: isinstance(m, RegisterAgent) and m.data.agent.agent_id == AGENT_ID,
                within=60,
            )
            await publish_tasks(kafka, AGENT_ID, task, transactional=True)
            # The task has started once a heartbeat counts it in flight.
            await beats.wait_for(
                lambda m: (
                    isinstance(m, AgentHeartbeat)
                    and m.data.agent_id == AGENT_ID
                    and m.data.in_flight >= 1
                ),
                within=30,
            )
            assert not results.matching(
                lambda m: isinstance(m, AgentResult) and m.data.execution_id == execution_id
            )
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(40):
                returncode = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        output = log.read_text()
        assert returncode == 0, output
        assert "agent_draining" in output

        [result] = await results.wait_for(
            lambda m: isinstance(m, AgentResult) and m.data.execution_id == execution_id,
            within=5,
        )
        assert isinstance(result, AgentResult)
        assert result.data.status == "success"
        assert result.data.output == {"slept_ms": 1000.0}
        await beats.wait_for(
            lambda m: (
                isinstance(m, AgentHeartbeat) and m.data.agent_id == AGENT_ID and not m.data.ready
            ),
            within=5,
        )
    await wait_caught_up(kafka, f"{kafka.prefix}agent.{AGENT_ID}", kafka.agent_tasks(AGENT_ID))
