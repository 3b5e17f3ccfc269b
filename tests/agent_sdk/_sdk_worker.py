"""An SDK agent run as its own process by ``test_sdk_process``::

    python _sdk_worker.py AGENT_ID

Environment: ``KAFKA_BOOTSTRAP_SERVERS``, ``SPINE_TOPIC_PREFIX``, ``SPINE_HEARTBEAT_INTERVAL``.
A task with ``config.hold`` is held until a line arrives on stdin (the test's release, an
event rather than a delay that a busy machine may outrun); the answer names that line.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from spine_agent import Agent, AgentInfo, Task

agent = Agent(AgentInfo(agent_id=sys.argv[1], capabilities=("testing",)), drain_timeout=20)


async def _line_on_stdin() -> str:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return (await reader.readline()).decode().strip()


@agent.handler
async def handle(task: Task) -> dict[str, Any]:
    if task.config.get("hold"):
        return {"released_by": await _line_on_stdin()}
    return {"released_by": None}


if __name__ == "__main__":
    agent.run()
