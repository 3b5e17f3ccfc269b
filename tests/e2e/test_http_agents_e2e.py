"""End to end: an HTTP agent (echo-http) served through the relay, all real processes.

The agent is registered over Kafka the way ``POST /api/v1/agents`` does it (transport
``http`` plus an endpoint); the relay's health probe makes it active, its task consumer
turns the orchestrator's tasks into ``POST /execute`` calls. The relay signs every call
with its key and echo-http, given the relay's public key, serves only signed calls: every
flow that completes here went through a verified signature.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from spine_contracts import (
    AgentInfo,
    DeregisterAgent,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    FlowDefinition,
    FlowNode,
    NodeCompleted,
    NodeConfig,
    NodeDispatched,
    NodeWaitingAgent,
    RegisterAgent,
    topics,
)
from spine_registry.relay.keyfile import load_or_create, public_pem
from spine_registry.relay.signing import RelaySigner
from spine_servicekit.kafka import KafkaConfig

from .harness import Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

AGENT = "echo-http"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node(node_id: str, *deps: str, **config: Any) -> FlowNode:
    return FlowNode(id=node_id, agent_id=AGENT, depends_on=deps, config=NodeConfig(**config))


def flow(flow_id: str, *nodes: FlowNode) -> FlowDefinition:
    return FlowDefinition(flow_id=flow_id, nodes=nodes)


class HttpStack(Stack):
    endpoint: str = ""
    key_id: str = ""

    def log_lines(self, name: str) -> list[dict[str, Any]]:
        path = Path(self.logs / f"test-{self.kafka.prefix}{name}.log")
        lines = []
        for raw in path.read_bytes().splitlines():
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(line, dict):
                lines.append(line)
        return lines

    def logged(self, name: str, event: str, **fields: Any) -> bool:
        return any(
            line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
            for line in self.log_lines(name)
        )

    async def wait_log(self, name: str, event: str, within: float = 30.0, **fields: Any) -> None:
        """Wait for a structured log line; processes log to files, so this polls."""
        async with asyncio.timeout(within):
            while True:
                if self.logged(name, event, **fields):
                    return
                await asyncio.sleep(0.1)  # a file has no "line written" notification


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    kafka: KafkaConfig,
    infra: dict[str, str],
    topic_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[HttpStack]:
    port = free_port()
    # the relay's key, made the way the relay makes it; echo-http trusts its public half
    key = load_or_create(tmp_path_factory.mktemp("relay") / "signing-key.pem")
    env = {
        **os.environ,
        **infra,
        "SPINE_TOPIC_PREFIX": topic_prefix,
        "SPINE_TOPIC_PARTITIONS": str(kafka.partitions),
        "FLOWS_DIR": str(tmp_path_factory.mktemp("flows")),
        "SPINE_ORCHESTRATOR_SCHEMA": f"{topic_prefix.strip('.')}_orc",
        "SPINE_REGISTRY_SCHEMA": f"{topic_prefix.strip('.')}_reg",
        "SPINE_HEARTBEAT_INTERVAL": "1",
        "SPINE_RELAY_PROBE_INTERVAL": "1",
        "SPINE_RELAY_MAX_RETRIES": "3",
        "SPINE_RELAY_BACKOFF": "0.1",
        "SPINE_RELAY_MAX_BACKOFF": "1",
        # the agent listens on loopback, which the relay's SSRF guard refuses by default
        "SPINE_RELAY_ALLOWED_NETWORKS": "127.0.0.1/32",
        "SPINE_RELAY_SIGNING_KEY_FILE": str(key.path),
        "ECHO_HTTP_RELAY_PUBLIC_KEY": public_pem(key.key).decode(),
        "LOG_LEVEL": "INFO",
    }
    s = HttpStack(kafka, env)
    s.endpoint = f"http://127.0.0.1:{port}"
    s.key_id = RelaySigner(key.key).key_id
    # the relay runs before the agent is registered: a registration starts its consumer live
    await s.start("registry", "orchestrator", "relay")
    await s.spawn("echo-http", {"ECHO_HTTP_PORT": str(port), "ECHO_HTTP_AGENT_ID": AGENT})
    info = AgentInfo(
        agent_id=AGENT,
        name="Echo over HTTP",
        transport="http",
        endpoint=s.endpoint,
        capabilities=("echo",),
    )
    # the admin's registration (as the gateway sends it): an HTTP agent signs nothing
    register = RegisterAgent.build(agent=info, owner="system")
    await s.publish(topics.REGISTRY_REQUESTS, AGENT, register)
    await s.agents_active(AGENT)
    yield s
    await s.stop()


async def test_flow_through_the_http_agent_completes_with_its_output(stack: HttpStack) -> None:
    f = flow("http-chain", node("a", shout=True), node("b", "a"))
    eid = await stack.start_execution(f, {"user_message": "hello", "amount": 3})
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionCompleted), done
    a = stack.of_type(eid, NodeCompleted)[0].data.output
    assert a["message"] == "echo: hello"
    assert a["metadata"]["agent_id"] == AGENT and a["metadata"]["call"] == 1
    sent = a["data"]["input"]
    assert sent["user_message"] == "hello"
    assert sent["context"]["input"] == {"user_message": "hello", "amount": 3}
    assert sent["context"]["attempt"] == 1
    assert sent["previous_messages"] == []
    assert a["data"]["config"]["shout"] is True  # the node config, passed through
    b = done.data.output_data["b"]
    assert b["data"]["input"]["context"]["dependencies"] == {"a": a}


async def test_http_500_is_retried_then_fails_naming_it(stack: HttpStack) -> None:
    eid = await stack.start_execution(flow("http-500", node("a", http_status=500)))
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionFailed), done
    message = done.data.error_message
    assert f"HTTP 500 from {stack.endpoint}/execute" in message, message
    assert "echo-http: configured status 500" in message
    assert "(after 4 attempts)" in message
    await stack.wait_log("relay", "relay_retry", execution_id=eid, attempt=3)


async def test_http_429_is_retried_after_retry_after_until_it_succeeds(stack: HttpStack) -> None:
    f = flow("http-429", node("a", http_status=429, http_status_times=2, retry_after=0.3))
    eid = await stack.start_execution(f)
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionCompleted), done
    output = done.data.output_data["a"]
    assert output["metadata"]["call"] == 3  # two 429s, then the answer
    (completed,) = stack.of_type(eid, NodeCompleted)
    assert completed.data.duration_ms >= 600  # both Retry-After waits were honoured
    assert len(stack.of_type(eid, NodeDispatched)) == 1  # the relay retried, not the flow


async def test_http_429_beyond_the_retries_fails(stack: HttpStack) -> None:
    eid = await stack.start_execution(flow("http-429-x", node("a", http_status=429)))
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionFailed), done
    assert "HTTP 429 from" in done.data.error_message
    assert "(after 4 attempts)" in done.data.error_message


async def test_an_error_answer_is_the_executions_error(stack: HttpStack) -> None:
    eid = await stack.start_execution(flow("http-fail", node("a", fail=True)))
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionFailed), done
    assert "echo-http: configured to fail (fail: true)" in done.data.error_message


async def test_a_hanging_agent_times_out(stack: HttpStack) -> None:
    eid = await stack.start_execution(flow("http-hang", node("a", hang=True, timeout=1)))
    done = await stack.terminal(eid, timeout=30)
    assert isinstance(done, ExecutionFailed), done
    assert "timed out" in done.data.error_message


async def test_calls_not_signed_by_the_relay_are_refused(stack: HttpStack) -> None:
    await stack.wait_log("relay", "relay_signing_key", key_id=stack.key_id, created=False)
    body = orjson.dumps({"execution_id": "e-forged", "node_id": "n1"})
    forger = RelaySigner(Ed25519PrivateKey.generate())
    async with httpx.AsyncClient(base_url=stack.endpoint) as client:
        unsigned = await client.post("/execute", content=body)
        forged = await client.post("/execute", content=body, headers=forger.headers(AGENT, body))
    assert unsigned.status_code == 401
    assert unsigned.json()["detail"] == "echo-http: missing header X-Spine-Signature"
    assert forged.status_code == 401
    assert "not the relay key" in forged.json()["detail"]


async def test_agent_down_goes_inactive_and_new_nodes_wait_or_fail_as_they_say(
    stack: HttpStack,
) -> None:
    """Its endpoint gone, the agent goes inactive: a node waits for it (``wait_for_agent``,
    60 s by default), one that says ``wait_for_agent: 0`` fails at once; nothing is sent."""
    stack.kill("echo-http")
    await stack.wait_exit("echo-http")
    await stack.wait_for(lambda: stack.agents.get(AGENT) is False, timeout=30)
    waits = await stack.start_execution(flow("http-down-wait", node("a")))
    wait = await stack.wait_event(waits, NodeWaitingAgent)
    assert (wait.data.agent_id, wait.data.reason) == (AGENT, "inactive")
    eid = await stack.start_execution(flow("http-down", node("a", wait_for_agent=0)))
    done = await stack.terminal(eid)
    assert isinstance(done, ExecutionFailed), done
    assert f"agent '{AGENT}' is inactive" in done.data.error_message
    assert stack.of_type(eid, NodeDispatched) == []
    assert stack.of_type(waits, NodeDispatched) == []
    await stack.cancel(waits)
    assert isinstance(await stack.terminal(waits), ExecutionCancelled)


async def test_deregistration_stops_the_relays_consumer(stack: HttpStack) -> None:
    await stack.publish(topics.REGISTRY_REQUESTS, AGENT, DeregisterAgent.build(agent_id=AGENT))
    await stack.wait_log("relay", "relay_agent_stopped", agent_id=AGENT)
