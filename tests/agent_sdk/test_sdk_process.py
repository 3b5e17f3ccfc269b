"""An SDK agent as a real process: SIGTERM drains the task in flight, then exits 0."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from spine_agent.testing import TopicReader, publish_tasks, task_message, wait_caught_up
from spine_contracts import AgentHeartbeat, AgentResult, Message, RegisterAgent, topics
from spine_servicekit.kafka import KafkaConfig
from support import issue_agent, spawn, stop

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WORKER = Path(__file__).with_name("_sdk_worker.py")
AGENT_ID = "sdk-proc"


async def test_sigterm_drains_the_task_in_flight(
    kafka: KafkaConfig, child_env: dict[str, str], tmp_path: Path
) -> None:
    issued = await issue_agent(kafka, AGENT_ID)  # as the operator does before it starts
    env = {
        **child_env,
        "SPINE_HEARTBEAT_INTERVAL": "0.2",
        "SPINE_AGENT_SIGNING_KEY_FILE": str(issued.key_file),
    }
    log = tmp_path / "agent.log"
    task = task_message(AGENT_ID, config={"hold": True})  # until released on stdin
    execution_id = task.data.execution_id

    def beat(in_flight: int, ready: bool) -> Callable[[Message], bool]:
        return lambda m: (
            isinstance(m, AgentHeartbeat)
            and m.data.agent_id == AGENT_ID
            and m.data.in_flight >= in_flight
            and m.data.ready is ready
        )

    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        TopicReader(kafka, kafka.topic(topics.REGISTRY_COMMANDS)) as commands,
        TopicReader(kafka, kafka.topic(topics.REGISTRY_HEARTBEATS)) as beats,
    ):
        proc = await spawn(
            sys.executable, WORKER, AGENT_ID, env=env, log=log, stdin=asyncio.subprocess.PIPE
        )
        try:
            await commands.wait_for(
                lambda m: isinstance(m, RegisterAgent) and m.data.agent.agent_id == AGENT_ID,
                within=60,
            )
            await publish_tasks(kafka, AGENT_ID, task, transactional=True)
            # The task has started once a heartbeat counts it in flight; it is held.
            await beats.wait_for(beat(1, ready=True), within=30)
            assert not results.matching(
                lambda m: isinstance(m, AgentResult) and m.data.execution_id == execution_id
            )
            proc.send_signal(signal.SIGTERM)
            # draining (no longer ready) with the task still in flight: now let it finish
            await beats.wait_for(beat(1, ready=False), within=30)
            assert proc.stdin is not None
            proc.stdin.write(b"release\n")
            await proc.stdin.drain()
        finally:
            returncode = await stop(proc, within=40)
        output = log.read_text()
        assert returncode == 0, output
        assert "agent_draining" in output

        [result] = await results.wait_for(
            lambda m: isinstance(m, AgentResult) and m.data.execution_id == execution_id,
            within=5,
        )
        assert isinstance(result, AgentResult)
        assert result.data.status == "success"
        assert result.data.output == {"released_by": "release"}
        await beats.wait_for(
            lambda m: (
                isinstance(m, AgentHeartbeat) and m.data.agent_id == AGENT_ID and not m.data.ready
            ),
            within=5,
        )
    await wait_caught_up(kafka, f"{kafka.prefix}agent.{AGENT_ID}", kafka.agent_tasks(AGENT_ID))
