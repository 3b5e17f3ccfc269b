"""The HTTP agent contract of the original product (docs/agents.md), as pydantic models.

An HTTP agent serves ``GET /health`` (:class:`HttpHealth`) and ``POST /execute``
(:class:`HttpExecuteRequest` → :class:`HttpExecuteResponse`); the registry's relay turns
Kafka tasks into these calls and the answers into ``AgentResult``s. Unknown fields are
accepted on the way in, so agents written for the original keep working.

The relay signs every call; :func:`verify_relay_signature` (from :mod:`.signature`, with
the ``relay-signature`` extra) tells an agent whether a call is the relay's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .signature import (
    AGENT_ID_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RelaySignatureError,
    load_public_key,
    verify_relay_signature,
)

__all__ = [
    "AGENT_ID_HEADER",
    "KEY_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "HttpExecuteInput",
    "HttpExecuteOutput",
    "HttpExecuteRequest",
    "HttpExecuteResponse",
    "HttpHealth",
    "RelaySignatureError",
    "load_public_key",
    "verify_relay_signature",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class HttpHealth(_Open):
    agent_id: str
    version: str = "1.0.0"
    capabilities: list[str] = Field(default_factory=list)
    ready: bool = True
    endpoint: str | None = None
    rate_limit: int | None = Field(default=None, description="requests per minute")


class HttpExecuteInput(_Open):
    user_message: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    previous_messages: list[Any] = Field(default_factory=list)


class HttpExecuteRequest(_Open):
    execution_id: str
    node_id: str
    input: HttpExecuteInput = Field(default_factory=HttpExecuteInput)
    config: dict[str, Any] = Field(default_factory=dict)


class HttpExecuteOutput(_Open):
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class HttpExecuteResponse(_Open):
    status: Literal["success", "error"]
    output: HttpExecuteOutput = Field(default_factory=HttpExecuteOutput)
    error_message: str | None = None
    execution_id: str
