"""Settings shared by every service (README.md, Configuration), read once from the environment.

Shared infrastructure keeps the original env names (``DATABASE_URL``, ``API_KEY``...);
a service's own knobs live in a subclass with its own prefix (``SPINE_ORCHESTRATOR_``).
What agents share with services (Kafka, logging, the ops port) is
:class:`spine_kafka.settings.ProcessSettings`, which :class:`CommonSettings` extends.
"""

from __future__ import annotations

from pydantic import Field
from spine_kafka.settings import (
    KafkaSettings,
    LogLevel,
    ProcessSettings,
    SettingsError,
    describe_errors,
    load_settings,
)

__all__ = [
    "DEFAULT_MASTER_KEY",
    "CommonSettings",
    "KafkaSettings",
    "LogLevel",
    "ProcessSettings",
    "SettingsError",
    "describe_errors",
    "load_settings",
]

DEFAULT_MASTER_KEY = "change-me"


class CommonSettings(ProcessSettings):
    database_url: str = Field("postgresql://spine:spine@127.0.0.1:5432/spine", alias="DATABASE_URL")
    redis_url: str = Field("redis://127.0.0.1:6379/0", alias="REDIS_URL")
    api_key: str = Field(DEFAULT_MASTER_KEY, alias="API_KEY", repr=False)
    api_key_required: bool | None = Field(None, alias="API_KEY_REQUIRED")
    port: int = Field(8000, alias="PORT", ge=1, le=65535)
    flows_dir: str = Field("flows", alias="FLOWS_DIR")

    @property
    def auth_required(self) -> bool:
        """``DEV_MODE`` turns the key requirement off unless it is set explicitly."""
        if self.api_key_required is not None:
            return self.api_key_required
        return not self.dev_mode
