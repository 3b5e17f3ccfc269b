"""Console settings: where the gateway and Redis are, and how long a session lives."""

from __future__ import annotations

import sys
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    host: str = Field("127.0.0.1", alias="SPINE_CONSOLE_HOST")
    port: int = Field(8080, alias="SPINE_CONSOLE_PORT", ge=1, le=65535)
    gateway_url: str = Field("http://127.0.0.1:8000", alias="SPINE_CONSOLE_GATEWAY_URL")
    redis_url: str = Field("redis://127.0.0.1:6379/0", alias="REDIS_URL")
    redis_prefix: str = Field("console:", alias="SPINE_CONSOLE_REDIS_PREFIX")
    #: a signed-in session and the key it mints both end after this long
    session_ttl_s: int = Field(7200, alias="SPINE_CONSOLE_SESSION_TTL", ge=60, le=43_200)
    #: a sign-in page's CSRF token lives this long before the form must be reloaded
    login_ttl_s: int = Field(900, alias="SPINE_CONSOLE_LOGIN_TTL", ge=60)
    #: ``Secure`` on the session cookie: on wherever the console is served over HTTPS
    cookie_secure: bool = Field(False, alias="SPINE_CONSOLE_COOKIE_SECURE")
    gateway_timeout_s: float = Field(15.0, alias="SPINE_CONSOLE_GATEWAY_TIMEOUT", gt=0)
    log_level: str = Field("INFO", alias="LOG_LEVEL")


def load(**overrides: Any) -> ConsoleSettings:
    """The settings from the environment, or exit naming each bad variable."""
    try:
        return ConsoleSettings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            print(f"spine-console: {where}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from exc
