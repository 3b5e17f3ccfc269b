"""AI Spine agent SDK: a Kafka-native agent is one async handler function.

::

    from spine_agent import Agent, AgentInfo, NeedsInput, Task

    agent = Agent(AgentInfo(agent_id="echo", capabilities=("echo",)), concurrency=32)

    @agent.handler
    async def handle(task: Task) -> dict:
        return {"echo": task.input}

    agent.run()

See ``docs/agents.md`` for the task fields, delivery guarantees and the HTTP contract.
"""

from __future__ import annotations

from spine_contracts import AgentInfo

from .agent import Agent, AgentError, AgentFailed, AgentStats, HandlerMissing
from .offsets import OffsetTracker
from .results import InvalidOutput, describe_error, jsonable_output, result_for
from .settings import AgentSettings
from .task import NeedsInput, Task, TaskFailed

__all__ = [
    "Agent",
    "AgentError",
    "AgentFailed",
    "AgentInfo",
    "AgentSettings",
    "AgentStats",
    "HandlerMissing",
    "InvalidOutput",
    "NeedsInput",
    "OffsetTracker",
    "Task",
    "TaskFailed",
    "describe_error",
    "jsonable_output",
    "result_for",
]
