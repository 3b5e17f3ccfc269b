"""Settings shared by every service (DESIGN §10), read once from the environment.

Shared infrastructure keeps the original env names (``DATABASE_URL``, ``API_KEY``...);
a service's own knobs live in a subclass with its own prefix (``SPINE_ORCHESTRATOR_``).
:func:`load_settings` turns a bad value into one clear message instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
DEFAULT_MASTER_KEY = "change-me"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", alias="KAFKA_BOOTSTRAP_SERVERS")
    database_url: str = Field("postgresql://spine:spine@127.0.0.1:5432/spine", alias="DATABASE_URL")
    redis_url: str = Field("redis://127.0.0.1:6379/0", alias="REDIS_URL")
    api_key: str = Field(DEFAULT_MASTER_KEY, alias="API_KEY", repr=False)
    api_key_required: bool | None = Field(None, alias="API_KEY_REQUIRED")
    api_host: str = Field("127.0.0.1", alias="API_HOST")
    port: int = Field(8000, alias="PORT", ge=1, le=65535)
    dev_mode: bool = Field(False, alias="DEV_MODE")
    log_level: LogLevel = Field("INFO", alias="LOG_LEVEL")
    flows_dir: str = Field("flows", alias="FLOWS_DIR")

    topic_prefix: str = Field("", alias="SPINE_TOPIC_PREFIX", pattern=r"^[A-Za-z0-9._\-]*$")
    topic_partitions: int = Field(2, alias="SPINE_TOPIC_PARTITIONS", ge=1, le=1000)
    topic_replication: int = Field(1, alias="SPINE_TOPIC_REPLICATION", ge=1, le=7)
    topic_min_isr: int = Field(1, alias="SPINE_TOPIC_MIN_ISR", ge=1, le=7)
    kafka_fetch_max_wait_ms: int = Field(500, alias="SPINE_KAFKA_FETCH_MAX_WAIT_MS", ge=0)
    kafka_linger_ms: int = Field(0, alias="SPINE_KAFKA_LINGER_MS", ge=0)
    #: uvloop (libuv) runs the same services with less CPU per event than asyncio's own loop
    event_loop: Literal["uvloop", "asyncio"] = Field("uvloop", alias="SPINE_EVENT_LOOP")
    #: how long a starting service waits for an absent broker before it gives up
    kafka_startup_timeout_s: float = Field(120.0, alias="SPINE_KAFKA_STARTUP_TIMEOUT", ge=0)
    #: the largest Kafka message a producer sends; the broker's message.max.bytes must allow it
    kafka_max_message_bytes: int = Field(
        1_048_576, alias="SPINE_KAFKA_MAX_MESSAGE_BYTES", ge=65_536
    )
    instance_id: str | None = Field(None, alias="SPINE_INSTANCE_ID")
    heartbeat_interval_s: float = Field(5.0, alias="SPINE_HEARTBEAT_INTERVAL", gt=0)
    #: /metrics, /health and /ready of a process without an HTTP API (0: not served)
    ops_port: int = Field(0, alias="SPINE_OPS_PORT", ge=0, le=65535)

    @property
    def auth_required(self) -> bool:
        """``DEV_MODE`` turns the key requirement off unless it is set explicitly."""
        if self.api_key_required is not None:
            return self.api_key_required
        return not self.dev_mode

    @model_validator(mode="after")
    def _check_replication(self) -> CommonSettings:
        if self.topic_min_isr > self.topic_replication:
            raise ValueError("SPINE_TOPIC_MIN_ISR cannot exceed SPINE_TOPIC_REPLICATION")
        return self


S = TypeVar("S", bound=BaseSettings)


class SettingsError(SystemExit):
    """Raised (as a clean exit) when the environment holds a bad value."""


def describe_errors(exc: ValidationError, cls: type[BaseSettings]) -> str:
    """One line per problem, naming the env variable; never echoes a secret or a URL."""
    lines = [f"invalid configuration for {cls.__name__}:"]
    by_env = {f.alias or n: f for n, f in cls.model_fields.items()}
    by_env.update({n: f for n, f in cls.model_fields.items()})
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        if name not in by_env:  # a rule across fields: the message says which
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
            continue
        env = name.upper()
        secret = "KEY" in env or "URL" in env or "PASSWORD" in env
        value = "" if secret else f" (got {err.get('input')!r})"
        lines.append(f"  {env}: {err['msg']}{value}")
    return "\n".join(lines)


def load_settings(cls: type[S], **overrides: object) -> S:
    """Build settings or exit with a message that names the variable and the problem."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        print(describe_errors(exc, cls), file=sys.stderr)
        raise SettingsError(2) from exc
