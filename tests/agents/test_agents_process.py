"""The console scripts: each demo agent starts as its own process, answers on the bus (or
over HTTP), and stops cleanly (exit 0) on SIGTERM."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
from pathlib import Path

import httpx
import pytest
from spine_agent.testing import TopicReader, publish_tasks, task_message
from spine_contracts import AgentHeartbeat, AgentResult, RegisterAgent, topics
from spine_servicekit.kafka import KafkaConfig
from support import issue_agent, log_tail, spawn, stop

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def _script(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed (uv sync --all-packages)"
    return path


async def _stop(proc: asyncio.subprocess.Process, log: Path) -> None:
    assert await stop(proc, within=40) == 0, log_tail(log, 5000)


async def test_kafka_agents_answer_and_stop_cleanly(
    kafka: KafkaConfig, child_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**child_env, "SPINE_HEARTBEAT_INTERVAL": "0.5"}
    tasks = {
        "zoe": task_message("zoe", input={"name": "Ana"}, node_type="input"),
        "eddie": task_message(
            "eddie",
            dependencies={
                "zoe": {
                    "applicant": {"income": 2000, "amount": 20000, "term_months": 12, "debts": 300}
                }
            },
        ),
        # long enough that several beats (every 0.5 s) count it in flight: the SIGTERM
        # below is sent once one did, and the drain lets it finish
        "echo": task_message("echo", input={"n": 1}, config={"delay_ms": 5000}),
    }
    procs: dict[str, tuple[asyncio.subprocess.Process, Path]] = {}
    async with (
        TopicReader(kafka, kafka.topic(topics.AGENT_RESULTS)) as results,
        TopicReader(kafka, kafka.topic(topics.REGISTRY_COMMANDS)) as commands,
        TopicReader(kafka, kafka.topic(topics.REGISTRY_HEARTBEATS)) as beats,
    ):
        try:
            for agent_id in tasks:
                log = tmp_path / f"{agent_id}.log"
                issued = await issue_agent(kafka, agent_id)  # as `make up` does first
                own = {**env, "SPINE_AGENT_SIGNING_KEY_FILE": str(issued.key_file)}
                proc = await spawn(_script(f"spine-agent-{agent_id}"), env=own, log=log)
                procs[agent_id] = (proc, log)
            registered = await commands.wait_for(
                lambda m: isinstance(m, RegisterAgent) and m.data.agent.agent_id in tasks,
                count=3,
                within=60,
            )
            assert {m.data.agent.agent_id for m in registered} == set(tasks)  # type: ignore[attr-defined]
            await publish_tasks(kafka, "zoe", tasks["zoe"], transactional=True)
            await publish_tasks(kafka, "eddie", tasks["eddie"], transactional=True)
            await publish_tasks(kafka, "echo", tasks["echo"], transactional=True)
            # SIGTERM echo while its task runs: it still answers before exiting.
            await beats.wait_for(
                lambda m: (
                    isinstance(m, AgentHeartbeat)
                    and m.data.agent_id == "echo"
                    and m.data.in_flight >= 1
                ),
                within=30,
            )
            procs["echo"][0].send_signal(signal.SIGTERM)
            ids = {t.data.execution_id: a for a, t in tasks.items()}
            found = await results.wait_for(
                lambda m: isinstance(m, AgentResult) and m.data.execution_id in ids,
                count=3,
                within=30,
            )
        finally:
            for proc, log in procs.values():
                await _stop(proc, log)
    by_agent = {m.data.agent_id: m.data for m in found}  # type: ignore[attr-defined]
    assert by_agent["zoe"].status == "needs_input"
    assert by_agent["zoe"].missing_fields == ("income", "amount", "term_months")
    assert by_agent["eddie"].status == "success"
    assert by_agent["eddie"].output["decision"] == "reject"
    assert by_agent["echo"].status == "success"
    assert by_agent["echo"].output["echo"] == {"n": 1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_echo_http_serves_the_contract(child_env: dict[str, str], tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "echo-http.log"
    env = {**child_env, "ECHO_HTTP_PORT": str(port)}
    proc = await spawn(_script("spine-agent-echo-http"), env=env, log=log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with asyncio.timeout(120):
                while True:
                    try:
                        health = await client.get("/health")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.1)  # the server is still binding its port
            assert health.json()["endpoint"] == f"http://127.0.0.1:{port}"
            answer = await client.post(
                "/execute",
                json={"execution_id": "e1", "node_id": "n1", "input": {"user_message": "hi"}},
            )
            assert answer.json()["status"] == "success"
            assert answer.json()["output"]["message"] == "echo: hi"
    finally:
        await _stop(proc, log)
