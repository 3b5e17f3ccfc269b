"""Orchestrator settings: the shared ones plus its own knobs (``SPINE_ORCHESTRATOR_*``)."""

from __future__ import annotations

from pydantic import Field
from spine_servicekit.settings import CommonSettings


class OrchestratorSettings(CommonSettings):
    default_node_timeout_s: float = Field(
        300.0,
        alias="SPINE_ORCHESTRATOR_NODE_TIMEOUT",
        gt=0,
        description="per-attempt timeout of a node that sets none",
    )
    default_input_timeout_s: float = Field(
        3600.0,
        alias="SPINE_ORCHESTRATOR_INPUT_TIMEOUT",
        gt=0,
        description="how long an input node waits for the human when it sets no input_timeout",
    )
    default_agent_wait_s: float = Field(
        60.0,
        alias="SPINE_ORCHESTRATOR_WAIT_FOR_AGENT",
        ge=0,
        description="how long a node waits for an inactive agent when neither it nor its flow "
        "sets wait_for_agent (0: fail at once)",
    )
    db_schema: str = Field("orchestrator", alias="SPINE_ORCHESTRATOR_SCHEMA")
    max_batch: int = Field(500, alias="SPINE_ORCHESTRATOR_MAX_BATCH", ge=1)
    watch_flows: bool = Field(True, alias="SPINE_ORCHESTRATOR_WATCH_FLOWS")
