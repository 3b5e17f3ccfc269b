"""The flow definition (docs/flows.md) as it travels on the bus.

``StartExecution`` embeds a whole :class:`FlowDefinition`, so an execution stays pinned to
the definition it began with. File-level validation (file, node and field in every
message) lives in the orchestrator's flow loader; this module is the shape only.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from .metering import TokenPrice

NodeType = Literal["input", "processor", "conditional", "output"]


class NodeConfig(BaseModel):
    """Known knobs are typed; anything else is passed to the agent untouched."""

    model_config = ConfigDict(frozen=True, extra="allow", allow_inf_nan=False)

    timeout: float | None = Field(default=None, gt=0, description="seconds per attempt")
    retries: int = Field(default=0, ge=0, le=20)
    retry_backoff: float = Field(default=1.0, ge=0, description="first backoff in seconds")
    max_turns: PositiveInt | None = None
    required_fields: tuple[str, ...] = ()
    input_timeout: float | None = Field(default=None, gt=0, description="seconds")
    wait_for_agent: float | None = Field(
        default=None,
        ge=0,
        description="seconds to wait for an inactive agent (default: the flow's, else 60; "
        "0: fail at once)",
    )


class FlowNode(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    id: str = Field(min_length=1, max_length=128)
    agent_id: str | None = None
    type: NodeType = "processor"
    depends_on: tuple[str, ...] = ()
    when: str | None = None
    config: NodeConfig = NodeConfig()
    metadata: dict[str, Any] = Field(default_factory=dict)


class FlowDefinition(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    flow_id: str = Field(min_length=1, max_length=128)
    name: str = ""
    description: str = ""
    version: str = "1.0.0"
    entry_point: str | tuple[str, ...] | None = None
    exit_points: tuple[str, ...] | None = None
    nodes: tuple[FlowNode, ...]
    timeout: float | None = Field(default=None, gt=0, description="seconds for the execution")
    wait_for_agent: float | None = Field(
        default=None, ge=0, description="the nodes' wait_for_agent when they set none"
    )
    cost: int = Field(default=1, ge=0)
    #: credits per 1,000 tokens per model (``"*"``: any other model); needs ``max_credits``
    pricing: dict[str, TokenPrice] = Field(default_factory=dict)
    #: reserved when the execution starts, for its base price and its tokens (DESIGN §14)
    max_credits: int | None = Field(default=None, ge=0, le=1_000_000_000)
    metadata: dict[str, Any] = Field(default_factory=dict)

    def content_hash(self) -> str:
        """Version of the normalised definition: equal meaning, equal hash."""
        normal = self.model_dump(mode="json", exclude_defaults=True)
        return hashlib.sha256(orjson.dumps(normal, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
