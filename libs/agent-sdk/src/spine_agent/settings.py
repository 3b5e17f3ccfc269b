"""Settings of an agent process: the shared ones (DESIGN §10) plus the agent's knobs."""

from __future__ import annotations

from pydantic import Field
from spine_servicekit.settings import CommonSettings


class AgentSettings(CommonSettings):
    """``SPINE_AGENT_*`` override what the agent's code chose; unset means "as coded"."""

    agent_concurrency: int | None = Field(None, alias="SPINE_AGENT_CONCURRENCY", ge=1, le=10_000)
    agent_drain_timeout_s: float | None = Field(None, alias="SPINE_AGENT_DRAIN_TIMEOUT", gt=0)
