"""Registry settings: the shared ones plus ``SPINE_REGISTRY_*`` knobs."""

from __future__ import annotations

from pydantic import Field
from spine_servicekit.settings import CommonSettings


class RegistrySettings(CommonSettings):
    heartbeat_ttl_s: float = Field(15.0, alias="SPINE_REGISTRY_HEARTBEAT_TTL", gt=0)
    sweep_interval_s: float = Field(1.0, alias="SPINE_REGISTRY_SWEEP_INTERVAL", gt=0)
    db_schema: str = Field("registry", alias="SPINE_REGISTRY_SCHEMA")
