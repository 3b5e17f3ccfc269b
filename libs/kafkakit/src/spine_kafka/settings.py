"""Settings of every process on the bus, a service or an agent, read from the environment.

:class:`KafkaSettings` is the one model of how to reach Kafka and shape its topics, and it
inherits how to log in to it (:class:`spine_kafka.security.KafkaSecuritySettings`);
:class:`ProcessSettings` adds what any long-running process needs (logging, event loop,
heartbeats, the ops port). Services extend it with their databases and keys
(``spine_servicekit.settings.CommonSettings``), agents with their own knobs
(``spine_agent.AgentSettings``). Shared infrastructure keeps the original env names
(``KAFKA_BOOTSTRAP_SERVERS``, ``LOG_LEVEL``...). :func:`load_settings` turns a bad value
into one clear message instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .security import KafkaSecuritySettings

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class KafkaSettings(KafkaSecuritySettings):
    """How to reach the brokers (and log in: the ``KAFKA_SECURITY_PROTOCOL``/``KAFKA_SASL_*``
    fields it inherits), and the topics' names and shape."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", alias="KAFKA_BOOTSTRAP_SERVERS")
    topic_prefix: str = Field("", alias="SPINE_TOPIC_PREFIX", pattern=r"^[A-Za-z0-9._\-]*$")
    topic_partitions: int = Field(2, alias="SPINE_TOPIC_PARTITIONS", ge=1, le=1000)
    topic_replication: int = Field(1, alias="SPINE_TOPIC_REPLICATION", ge=1, le=7)
    topic_min_isr: int = Field(1, alias="SPINE_TOPIC_MIN_ISR", ge=1, le=7)
    kafka_fetch_max_wait_ms: int = Field(500, alias="SPINE_KAFKA_FETCH_MAX_WAIT_MS", ge=0)
    kafka_linger_ms: int = Field(0, alias="SPINE_KAFKA_LINGER_MS", ge=0)
    #: how long a starting process waits for an absent broker before it gives up
    kafka_startup_timeout_s: float = Field(120.0, alias="SPINE_KAFKA_STARTUP_TIMEOUT", ge=0)
    #: the largest Kafka message a producer sends; the broker's message.max.bytes must allow it
    kafka_max_message_bytes: int = Field(
        1_048_576, alias="SPINE_KAFKA_MAX_MESSAGE_BYTES", ge=65_536
    )
    #: a consumer group member that sends no heartbeat for this long is dead: its
    #: partitions move to the others (docs/operations.md, "Consumer groups"). The broker
    #: refuses a value below its ``group.min.session.timeout.ms`` (6000 unless lowered).
    kafka_session_timeout_ms: int = Field(
        6_000, alias="SPINE_KAFKA_SESSION_TIMEOUT_MS", ge=1_000, le=1_800_000
    )
    #: how often a member heartbeats; the beats come from the process's event loop, so a
    #: loop blocked for longer than session - interval loses the member its partitions
    kafka_heartbeat_interval_ms: int = Field(
        1_000, alias="SPINE_KAFKA_HEARTBEAT_INTERVAL_MS", ge=100
    )
    #: how long a rebalance waits for the live members to finish revoking (the
    #: transactional loop lets its in-flight transaction finish) and rejoin
    kafka_rebalance_timeout_ms: int = Field(
        10_000, alias="SPINE_KAFKA_REBALANCE_TIMEOUT_MS", ge=1_000
    )

    @model_validator(mode="after")
    def _check_replication(self) -> KafkaSettings:
        if self.topic_min_isr > self.topic_replication:
            raise ValueError("SPINE_TOPIC_MIN_ISR cannot exceed SPINE_TOPIC_REPLICATION")
        return self

    @model_validator(mode="after")
    def _check_group_timing(self) -> KafkaSettings:
        if self.kafka_heartbeat_interval_ms * 2 > self.kafka_session_timeout_ms:
            # one missed beat would then end the session
            raise ValueError(
                "SPINE_KAFKA_HEARTBEAT_INTERVAL_MS must be at most half of "
                "SPINE_KAFKA_SESSION_TIMEOUT_MS (a third is usual)"
            )
        return self


class ProcessSettings(KafkaSettings):
    """What every long-running process on the bus reads besides Kafka."""

    api_host: str = Field("127.0.0.1", alias="API_HOST")
    dev_mode: bool = Field(False, alias="DEV_MODE")
    log_level: LogLevel = Field("INFO", alias="LOG_LEVEL")
    #: uvloop (libuv) runs the same processes with less CPU per event than asyncio's own loop
    event_loop: Literal["uvloop", "asyncio"] = Field("uvloop", alias="SPINE_EVENT_LOOP")
    instance_id: str | None = Field(None, alias="SPINE_INSTANCE_ID")
    heartbeat_interval_s: float = Field(5.0, alias="SPINE_HEARTBEAT_INTERVAL", gt=0)
    #: /metrics, /health and /ready of a process without an HTTP API (0: not served)
    ops_port: int = Field(0, alias="SPINE_OPS_PORT", ge=0, le=65535)


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


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings or exit with a message that names the variable and the problem."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        print(describe_errors(exc, cls), file=sys.stderr)
        raise SettingsError(2) from exc
