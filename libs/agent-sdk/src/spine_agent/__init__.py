"""AI Spine agent SDK: a Kafka-native agent is one async handler function.

::

    from spine_agent import Agent, AgentInfo, NeedsInput, Task

    agent = Agent(AgentInfo(agent_id="echo", capabilities=("echo",)), concurrency=32)

    @agent.handler
    async def handle(task: Task) -> dict:
        return {"echo": task.input}

    agent.run()

See ``docs/agents.md`` for the task fields, delivery guarantees and the HTTP contract.
A process that serves the HTTP contract instead (``spine_agent.http``) uses the same
logging and settings helpers: ``configure_logging``, ``get_logger``, ``load_settings``.
"""

from __future__ import annotations

from spine_contracts import AgentInfo
from spine_kafka.logging import configure_logging, get_logger

from .agent import Agent, AgentError, AgentFailed, AgentStats, HandlerMissing
from .offsets import OffsetTracker
from .results import InvalidOutput, describe_error, jsonable_output, result_for
from .settings import AgentSettings, LogLevel, SettingsError, load_settings
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
    "LogLevel",
    "NeedsInput",
    "OffsetTracker",
    "SettingsError",
    "Task",
    "TaskFailed",
    "configure_logging",
    "describe_error",
    "get_logger",
    "jsonable_output",
    "load_settings",
    "result_for",
]
