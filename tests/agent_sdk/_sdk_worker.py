"""An SDK agent run as its own process by ``test_sdk_process``::

    python _sdk_worker.py AGENT_ID

Environment: ``KAFKA_BOOTSTRAP_SERVERS``, ``SPINE_TOPIC_PREFIX``, ``SPINE_HEARTBEAT_INTERVAL``.
The handler sleeps ``config.delay_ms`` and answers how long it slept.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from spine_agent import Agent, AgentInfo, Task

agent = Agent(AgentInfo(agent_id=sys.argv[1], capabilities=("testing",)), drain_timeout=20)


@agent.handler
async def handle(task: Task) -> dict[str, Any]:
    delay_ms = float(task.config.get("delay_ms", 0))
    await asyncio.sleep(delay_ms / 1000)
    return {"slept_ms": delay_ms}


if __name__ == "__main__":
    agent.run()
