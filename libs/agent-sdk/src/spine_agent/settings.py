"""Settings of an agent process: what every process on the bus reads plus the agent's knobs.

The Kafka login (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``, ``KAFKA_CREDENTIALS_FILE``,
``KAFKA_SSL_CAFILE``) is the same model the services read (:mod:`spine_kafka.security`), so
an agent issued credentials connects as its own principal from the environment alone.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from spine_kafka.security import KafkaSecurity
from spine_kafka.settings import LogLevel, ProcessSettings, SettingsError, load_settings

__all__ = ["AgentSettings", "KafkaSecurity", "LogLevel", "SettingsError", "load_settings"]


class AgentSettings(ProcessSettings):
    """``SPINE_AGENT_*`` override what the agent's code chose; unset means "as coded"."""

    agent_concurrency: int | None = Field(None, alias="SPINE_AGENT_CONCURRENCY", ge=1, le=10_000)
    agent_drain_timeout_s: float | None = Field(None, alias="SPINE_AGENT_DRAIN_TIMEOUT", gt=0)
    #: the agent's Ed25519 private key (PEM, 0600) that signs everything it publishes,
    #: written by ``spine-admin issue-agent <id>``; unset: ``.spine/agents/<id>/signing-key.pem``
    #: relative to the working directory (:func:`spine_agent.signing.default_key_file`)
    signing_key_file: Path | None = Field(None, alias="SPINE_AGENT_SIGNING_KEY_FILE")
