"""Register the demo HTTP agent (echo-http) that `make up` runs, as compose's `init` job
does: a RegisterAgent command to the registry, then wait (up to 60 s) until the registry's
catalogue shows it registered at this endpoint (at once when it already is: the registry
emits nothing for a registration that changes nothing). Idempotent.

    python scripts/register_echo_http.py   (ECHO_HTTP_HOST, ECHO_HTTP_PORT, ECHO_HTTP_AGENT_ID)
"""

from __future__ import annotations

import asyncio
import os
import sys

from spine_contracts import (
    AgentDeregistered,
    AgentInfo,
    AgentRegistered,
    RegisterAgent,
    to_bytes,
    topics,
)
from spine_contracts.access import SYSTEM
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import KafkaConfig, headers_for, make_producer
from spine_servicekit.settings import CommonSettings, load_settings


async def main() -> int:
    host = os.environ.get("ECHO_HTTP_HOST", "127.0.0.1")
    port = os.environ.get("ECHO_HTTP_PORT", "8101")
    info = AgentInfo(
        agent_id=os.environ.get("ECHO_HTTP_AGENT_ID", "echo-http"),
        name="Echo (HTTP)",
        endpoint=f"http://{host}:{port}",
        capabilities=("echo", "testing"),
        transport="http",
    )
    cfg = KafkaConfig.from_settings(load_settings(CommonSettings), client_id="spine-register")
    registered = asyncio.Event()

    def seen(message: object, _record: object) -> None:
        # the catalogue from its start: the registry emits nothing for a registration that
        # changes nothing, so "already registered here" must count as done
        if isinstance(message, AgentRegistered | AgentDeregistered):
            agent = message.data.agent
            if agent.agent_id != info.agent_id:
                return
            here = isinstance(message, AgentRegistered) and agent.endpoint == info.endpoint
            if here:
                registered.set()
            else:
                registered.clear()

    follower = TopicFollower(cfg, cfg.topic(topics.REGISTRY_EVENTS), seen, name="register")
    producer = make_producer(cfg)
    await follower.start()
    await producer.start()
    try:
        # the operator's registration, as the admin's gateway sends it: an HTTP agent signs
        # nothing itself (the relay signs what it writes for it)
        message = RegisterAgent.build(agent=info, owner=SYSTEM)
        await producer.send_and_wait(
            cfg.topic(topics.REGISTRY_REQUESTS),
            to_bytes(message),
            key=info.agent_id.encode(),
            headers=headers_for(message),
        )
        try:
            async with asyncio.timeout(60):
                await registered.wait()
        except TimeoutError:
            print(f"!!  {info.agent_id}: the registry did not confirm in 60 s", file=sys.stderr)
            return 1
    finally:
        await producer.stop()
        await follower.stop()
    print(f"    {info.agent_id}: registered at {info.endpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
