"""Relay settings: the shared ones (README.md, Configuration) plus ``SPINE_RELAY_*`` knobs."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from ..settings import AllowedNetworks


class RelaySettings(AllowedNetworks):
    max_retries: int = Field(
        3,
        alias="SPINE_RELAY_MAX_RETRIES",
        ge=0,
        le=20,
        description="retries after the first call (on 429, 5xx, connection errors)",
    )
    backoff_s: float = Field(
        0.5, alias="SPINE_RELAY_BACKOFF", gt=0, description="first retry delay; doubles per retry"
    )
    max_backoff_s: float = Field(10.0, alias="SPINE_RELAY_MAX_BACKOFF", gt=0)
    request_timeout_s: float = Field(
        300.0,
        alias="SPINE_RELAY_REQUEST_TIMEOUT",
        gt=0,
        description="per call, for a task with neither a node timeout nor a deadline",
    )
    probe_interval_s: float = Field(5.0, alias="SPINE_RELAY_PROBE_INTERVAL", gt=0)
    probe_timeout_s: float = Field(2.0, alias="SPINE_RELAY_PROBE_TIMEOUT", gt=0)
    concurrency: int = Field(
        16, alias="SPINE_RELAY_CONCURRENCY", ge=1, le=1000, description="calls in flight per agent"
    )
    max_connections: int = Field(
        500, alias="SPINE_RELAY_MAX_CONNECTIONS", ge=1, description="of the shared HTTP pool"
    )
    drain_timeout_s: float = Field(
        10.0,
        alias="SPINE_RELAY_DRAIN_TIMEOUT",
        gt=0,
        description="how long calls in flight may finish when an agent's consumer stops",
    )

    signing_key_file: Path = Field(
        Path(".spine/relay/signing-key.pem"),
        alias="SPINE_RELAY_SIGNING_KEY_FILE",
        description="the relay's Ed25519 private key (PEM) that signs every call to an HTTP "
        "agent; generated (0600, with <file>.pub beside it) when missing; relative to the "
        "working directory",
    )

    @model_validator(mode="after")
    def _check_backoff(self) -> RelaySettings:
        if self.max_backoff_s < self.backoff_s:
            raise ValueError("SPINE_RELAY_MAX_BACKOFF cannot be below SPINE_RELAY_BACKOFF")
        return self
