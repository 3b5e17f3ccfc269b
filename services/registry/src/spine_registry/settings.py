"""Registry settings: the shared ones plus ``SPINE_REGISTRY_*`` knobs."""

from __future__ import annotations

from pydantic import Field, field_validator
from spine_servicekit.settings import CommonSettings

from .addresses import AddressPolicy, parse_networks


class RegistrySettings(CommonSettings):
    heartbeat_ttl_s: float = Field(15.0, alias="SPINE_REGISTRY_HEARTBEAT_TTL", gt=0)
    sweep_interval_s: float = Field(1.0, alias="SPINE_REGISTRY_SWEEP_INTERVAL", gt=0)
    db_schema: str = Field("registry", alias="SPINE_REGISTRY_SCHEMA")
    relay_allowed_networks: str = Field(
        "",
        alias="SPINE_RELAY_ALLOWED_NETWORKS",
        description="the relay's setting, read here to refuse registrations it would refuse",
    )

    @field_validator("relay_allowed_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def address_policy(self) -> AddressPolicy:
        return AddressPolicy.from_setting(self.relay_allowed_networks)
