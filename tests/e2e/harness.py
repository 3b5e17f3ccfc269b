"""A running AI Spine for end-to-end tests: real processes on the real bus.

``Stack`` starts service and agent processes with a test's topic prefix, follows the
execution log and the agent catalogue, and lets a test publish commands and await events
(never sleep). Processes log to ``.spine/logs/test-<prefix><name>.log``.

Before it starts an agent (or the relay) it issues it as ``make up`` does, through
``spine-admin``'s code (:func:`support.issue_agent`), and hands the process its key file:
an agent nobody issued has its work refused. On the secured broker every process logs in
as its own principal (:func:`support.issue_services`, the agent's ``agent-<id>``), never as
the admin the test itself uses: a missing ACL shows here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from spine_contracts import (
    TERMINAL_STATUSES,
    AgentCancel,
    AgentDeregistered,
    AgentRegistered,
    AgentStatusChanged,
    CancelExecution,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    FlowDefinition,
    Message,
    ProvideInput,
    StartExecution,
    to_bytes,
    topics,
)
from spine_contracts.signing import RELAY_SIGNER
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import KafkaConfig, headers_for, make_producer
from support import agent_key_file, issue_agent, issue_services, login_env, spawn, stop

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TERMINAL_EVENTS = (ExecutionCompleted, ExecutionFailed, ExecutionCancelled)

COMMANDS = {
    "orchestrator": ["spine-orchestrator"],
    "registry": ["spine-registry"],
    "auth": ["spine-auth"],
    "gateway": ["spine-gateway"],
    "echo": ["spine-agent-echo"],
    "zoe": ["spine-agent-zoe"],
    "eddie": ["spine-agent-eddie"],
    "relay": ["spine-relay"],
    "echo-http": ["spine-agent-echo-http"],
    "llm": ["spine-agent-llm"],  # SPINE_LLM_* from the test
    "llm-claude": ["spine-agent-llm"],
}
#: the processes that beat on spine.services.heartbeats, by the service name they beat under
BEATING = {
    "orchestrator": "orchestrator",
    "registry": "registry",
    "auth": "auth",
    "gateway": "gateway",
    "relay": "relay",
    "spine-metrics": "metrics",
}
#: the processes that sign what they publish, by the agent id they are issued under
ISSUED = {
    "echo": "echo",
    "zoe": "zoe",
    "eddie": "eddie",
    "relay": RELAY_SIGNER,
    "llm": "llm",
    "llm-claude": "llm-claude",
}


def expected_services(processes: tuple[str, ...], agents: tuple[str, ...]) -> str:
    """The gateway's ``SPINE_EXPECTED_SERVICES`` for a stack of ``processes`` that waits for
    ``agents``: what it runs, so ``/status`` is healthy once they all are."""
    names = [BEATING[p.split("#")[0]] for p in processes if p.split("#")[0] in BEATING]
    return ",".join(dict.fromkeys([*names, *(f"agent:{a}" for a in agents)]))


def orchestrator_env(
    kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str, flows_dir: Path, **extra: str
) -> dict[str, str]:
    """The environment of a registry + orchestrator + agents stack in the module's topic
    prefix and schemas (``extra``: more settings)."""
    base = topic_prefix.strip(".")
    return {
        **os.environ,
        **infra,
        "SPINE_TOPIC_PREFIX": topic_prefix,
        "SPINE_TOPIC_PARTITIONS": str(kafka.partitions),
        "FLOWS_DIR": str(flows_dir),
        "SPINE_ORCHESTRATOR_SCHEMA": f"{base}_orc",
        "SPINE_REGISTRY_SCHEMA": f"{base}_reg",
        "SPINE_HEARTBEAT_INTERVAL": "1",
        "LOG_LEVEL": "INFO",
        **extra,
    }


class Stack:
    def __init__(self, kafka: KafkaConfig, env: dict[str, str]) -> None:
        self.kafka = kafka
        self.env = env
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.events: dict[str, list[Message]] = defaultdict(list)
        self.agents: dict[str, bool] = {}
        self._changed = asyncio.Condition()
        self._followers: list[TopicFollower] = []
        self._producer = make_producer(kafka)
        self._issued: dict[str, Path | None] = {}
        self._service_logins: dict[str, Path] | None = None
        self.logs = ROOT / ".spine" / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self, *names: str, extra_env: dict[str, str] | None = None) -> None:
        await self._producer.start()
        for topic, apply in (
            (topics.EXECUTION_EVENTS, self._on_event),
            (topics.REGISTRY_EVENTS, self._on_agent),
        ):
            follower = TopicFollower(self.kafka, self.kafka.topic(topic), apply)
            await follower.start()
            self._followers.append(follower)
        for name in names:
            await self.spawn(name, extra_env)

    async def identity(self, name: str, env: dict[str, str]) -> dict[str, str]:
        """``env`` with who ``name`` is: its Kafka login on the secured broker (a service's
        principal, or the agent's), and the key file of the agent (or relay) it runs as,
        issued first in this stack's namespace."""
        base = name.split("#")[0]
        if self._service_logins is None:
            self._service_logins = await issue_services(self.kafka)
        env = {**env, **login_env(self._service_logins.get(base))}
        agent_id = ISSUED.get(base)
        if agent_id is None:
            return env
        if agent_id == RELAY_SIGNER:
            setting = "SPINE_RELAY_SIGNING_KEY_FILE"
            path = Path(env.get(setting) or agent_key_file(agent_id))
        else:
            setting = "SPINE_AGENT_SIGNING_KEY_FILE"
            path = agent_key_file(agent_id)
        if agent_id not in self._issued:
            issued = await issue_agent(self.kafka, agent_id, key_file=path)
            self._issued[agent_id] = issued.credentials_file
        return {**env, **login_env(self._issued[agent_id]), setting: str(path)}

    async def spawn(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        command = COMMANDS.get(name.split("#")[0], [name])
        env = {**self.env, **(extra_env or {}), "SPINE_INSTANCE_ID": f"{name}-test"}
        env = await self.identity(name, env)
        log = self.logs / f"test-{self.kafka.prefix}{name}.log"
        self.procs[name] = await spawn(BIN / command[0], *command[1:], env=env, log=log, cwd=ROOT)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)

    async def wait_exit(self, name: str) -> int:
        return await self.procs[name].wait()

    async def stop(self) -> None:
        # all at once; one that has not gone after 20 s is killed (no error: a test's
        # outcome is decided by then)
        await asyncio.gather(
            *(stop(proc, within=20) for proc in self.procs.values()), return_exceptions=True
        )
        for follower in self._followers:
            await follower.stop()
        await self._producer.stop()

    # --- followers ---------------------------------------------------------------------
    async def _on_event(self, message: Message, _record: Any) -> None:
        async with self._changed:
            self.events[str(message.data.execution_id)].append(message)  # type: ignore[attr-defined]
            self._changed.notify_all()

    async def _on_agent(self, message: Message, _record: Any) -> None:
        if isinstance(message, (AgentRegistered, AgentStatusChanged, AgentDeregistered)):
            async with self._changed:
                self.agents[message.data.agent.agent_id] = (
                    message.data.registered and message.data.active
                )
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def agents_active(self, *agent_ids: str, timeout: float = 90.0) -> None:  # noqa: ASYNC109
        await self.wait_for(lambda: all(self.agents.get(a) for a in agent_ids), timeout)

    # --- commands ----------------------------------------------------------------------
    async def publish(self, spec: topics.TopicSpec, key: str, message: Message) -> None:
        await self._producer.send_and_wait(
            self.kafka.topic(spec),
            to_bytes(message),
            key=key.encode(),
            headers=headers_for(message),
        )

    async def publish_many(
        self, spec: topics.TopicSpec, messages: Iterable[tuple[str, Message]]
    ) -> None:
        """Publish ``(key, message)`` pairs in batches and await every acknowledgement (a
        read-model test's thousands of events, without a round trip each)."""
        topic = self.kafka.topic(spec)
        acks = [
            await self._producer.send(
                topic, to_bytes(message), key=key.encode(), headers=headers_for(message)
            )
            for key, message in messages
        ]
        await asyncio.gather(*acks)

    async def start_execution(
        self,
        flow: FlowDefinition,
        input_data: dict[str, Any] | None = None,
        execution_id: str | None = None,
        credits: int = 1,
    ) -> str:
        execution_id = execution_id or f"ex-{os.urandom(6).hex()}"
        command = StartExecution.build(
            execution_id=execution_id,
            user_id="tester",
            flow=flow,
            flow_version=flow.content_hash(),
            input_data=input_data or {},
            credits_reserved=credits,
        )
        await self.publish(topics.EXECUTION_COMMANDS, execution_id, command)
        return execution_id

    async def provide_input(self, execution_id: str, data: dict[str, Any]) -> None:
        command = ProvideInput.build(execution_id=execution_id, input=data)
        await self.publish(topics.EXECUTION_COMMANDS, execution_id, command)

    async def cancel(self, execution_id: str) -> None:
        command = CancelExecution.build(execution_id=execution_id)
        await self.publish(topics.EXECUTION_COMMANDS, execution_id, command)

    async def release(self, agent_id: str, execution_id: str) -> None:
        """Tell an agent to drop a task the test held with a long ``delay_ms`` (once the
        test has what it waited for), instead of letting it run into shutdown."""
        cancel = AgentCancel.build(execution_id=execution_id, reason="released by the test")
        await self._producer.send_and_wait(
            self.kafka.agent_tasks(agent_id),
            to_bytes(cancel),
            key=execution_id.encode(),
            headers=headers_for(cancel),
        )

    # --- waiting -----------------------------------------------------------------------
    def of_type(
        self, execution_id: str, cls: type[Message] | tuple[type[Message], ...]
    ) -> list[Any]:
        return [e for e in self.events.get(execution_id, []) if isinstance(e, cls)]

    async def wait_event(
        self,
        execution_id: str,
        cls: type[Message] | tuple[type[Message], ...],
        timeout: float = 60.0,  # noqa: ASYNC109
    ) -> Any:
        await self.wait_for(lambda: bool(self.of_type(execution_id, cls)), timeout)
        return self.of_type(execution_id, cls)[0]

    async def terminal(self, execution_id: str, timeout: float = 60.0) -> Any:  # noqa: ASYNC109
        return await self.wait_event(execution_id, TERMINAL_EVENTS, timeout)


assert TERMINAL_STATUSES  # the statuses these events end in
