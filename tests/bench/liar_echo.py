"""An echo agent that lies: node ``b``'s output is tampered with (the wrong output the bench's
checks must catch). Registered as ``echo`` so the flows run through it unchanged."""

from __future__ import annotations

from typing import Any

from spine_agent import Agent, NeedsInput, Task
from spine_demo_agents import echo

liar = Agent(echo.agent.info, concurrency=64)


@liar.handler
async def handle(task: Task) -> dict[str, Any] | NeedsInput:
    out = await echo.handle(task)
    if isinstance(out, dict) and task.node_id == "b":
        return {**out, "echo": {"tampered": True}}
    return out


if __name__ == "__main__":
    liar.run()
