"""echo — returns its input (agent type ``processor``), with knobs for tests and benchmarks.

Output: ``{"echo": input, "dependencies": {...}, "node_id", "attempt", "conversation"}``.

Node config knobs:

* ``delay_ms``: work for that long first (``await asyncio.sleep``);
* ``fail: true``: always fail (an error result);
* ``fail_times: N``: fail attempts 1..N, succeed from attempt N+1. Decided from
  ``task.attempt`` alone, so every replica agrees and a retry by the orchestrator is what
  makes it pass;
* ``needs_input: true``: ask the human once (until the conversation has a user turn).
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

from spine_agent import Agent, AgentInfo, NeedsInput, Task


class EchoFailure(RuntimeError):
    """The failure echo was configured to produce."""


def _number(config: dict[str, Any], name: str) -> float:
    value = config.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"config {name} must be a number, got {value!r}")
    return float(value)


def should_fail(config: dict[str, Any], attempt: int) -> str | None:
    """Why this attempt fails, or ``None``."""
    if config.get("fail") is True:
        return "configured to fail (fail: true)"
    times = int(_number(config, "fail_times"))
    if attempt <= times:
        return f"configured to fail attempt {attempt} of the first {times} (fail_times)"
    return None


#: tasks outstanding at once over every echo replica (SPINE_ECHO_CAPACITY)
ECHO_CAPACITY = int(os.environ.get("SPINE_ECHO_CAPACITY", "256"))

agent = Agent(
    AgentInfo(
        agent_id="echo",
        name="Echo",
        description="Returns its input; delay_ms, fail, fail_times and needs_input knobs.",
        capabilities=("echo", "testing"),
        agent_type="processor",
        # what it declares (DESIGN §16): the orchestrator keeps no more outstanding. Lower
        # keeps its topic's line short for a newcomer (fairer) and caps throughput; measured
        # in bench/README.md ("A small tenant during a big tenant's burst")
        concurrency=ECHO_CAPACITY,
    ),
    concurrency=256,
)


@agent.handler
async def handle(task: Task) -> dict[str, Any] | NeedsInput:
    delay_ms = _number(task.config, "delay_ms")
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000)
    reason = should_fail(task.config, task.attempt)
    if reason is not None:
        raise EchoFailure(reason)
    if task.config.get("needs_input") is True and not task.user_turns():
        return NeedsInput("echo needs a message: what should I echo?", ("message",))
    return {
        "echo": task.input,
        "dependencies": task.dependencies,
        "node_id": task.node_id,
        "attempt": task.attempt,
        "conversation": list(task.conversation),
    }


def main() -> None:
    agent.run()


if __name__ == "__main__":
    main()
