"""Request bodies of the HTTP API (responses are plain JSON objects built by the service)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    flow_id: str = Field(min_length=1, max_length=128)
    input_data: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class CreateUserRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    name: str = Field(default="", max_length=200)
    organization: str = Field(default="", max_length=200)
    credits: int = Field(default=0, ge=0)
    rate_limit: int = Field(default=60, ge=1)
    user_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$"
    )


class AddCreditsRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: str = Field(min_length=1)
    credits: int = Field(gt=0)


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reason: str | None = Field(default=None, max_length=500)


class RegisterAgentRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    agent_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    name: str = ""
    description: str = ""
    endpoint: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    agent_type: str = "processor"
    transport: str | None = Field(default=None, pattern=r"^(kafka|http)$")
    version: str = "1.0.0"
    rate_limit: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
