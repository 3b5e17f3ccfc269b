"""Registry settings: the shared ones plus ``SPINE_REGISTRY_*`` knobs."""

from __future__ import annotations

from pydantic import Field, field_validator
from spine_servicekit.settings import CommonSettings

from .addresses import AddressPolicy, parse_networks


class AllowedNetworks(CommonSettings):
    """``SPINE_RELAY_ALLOWED_NETWORKS``, read by the relay (whom it may call) and by the
    registry (so it refuses the registrations the relay would refuse)."""

    allowed_networks: str = Field(
        "",
        alias="SPINE_RELAY_ALLOWED_NETWORKS",
        description="comma-separated CIDRs the relay may call although they are loopback, "
        "private, link-local, ... (e.g. 127.0.0.1/32 for a local demo agent)",
    )

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def address_policy(self) -> AddressPolicy:
        return AddressPolicy.from_setting(self.allowed_networks)


class RegistrySettings(AllowedNetworks):
    heartbeat_ttl_s: float = Field(15.0, alias="SPINE_REGISTRY_HEARTBEAT_TTL", gt=0)
    sweep_interval_s: float = Field(1.0, alias="SPINE_REGISTRY_SWEEP_INTERVAL", gt=0)
    db_schema: str = Field("registry", alias="SPINE_REGISTRY_SCHEMA")
