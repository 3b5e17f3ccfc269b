"""echo-http — the original HTTP agent contract (docs/agents.md), served by uvicorn.

``GET /health`` → ``{agent_id, version, capabilities, ready, endpoint, rate_limit}``;
``POST /execute`` with ``{execution_id, node_id, input: {user_message, context,
previous_messages}, config}`` → ``{status, output: {message, data, metadata},
error_message, execution_id}``. No Kafka here: the registry's relay calls it.

Config knobs, for testing the relay:

* ``delay_ms``: answer after that long;
* ``fail: true``: answer ``200 {"status": "error", ...}``;
* ``http_status: N``: answer with that status code (e.g. 500 or 429) and
  ``{"detail": ...}``; with ``http_status_times: K`` only the first K calls for the same
  ``(execution_id, node_id)`` do, later ones succeed (to test retries); ``retry_after: S``
  adds a ``Retry-After`` header;
* ``hang: true``: never answer in useful time (sleeps an hour), to test timeouts.

Environment: ``ECHO_HTTP_HOST`` (127.0.0.1), ``ECHO_HTTP_PORT`` (8101),
``ECHO_HTTP_AGENT_ID`` (echo-http), ``LOG_LEVEL``.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections import OrderedDict
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from spine_agent import LogLevel, configure_logging, get_logger, load_settings
from spine_agent.http import (
    HttpExecuteOutput,
    HttpExecuteRequest,
    HttpExecuteResponse,
    HttpHealth,
)

HANG_SECONDS = 3600.0
VERSION = "1.0.0"
CAPABILITIES = ["echo", "testing"]
_REMEMBERED_CALLS = 10_000

log = get_logger("spine_demo_agents.echo_http")


class EchoHttpSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    host: str = Field("127.0.0.1", alias="ECHO_HTTP_HOST")
    port: int = Field(8101, alias="ECHO_HTTP_PORT", ge=1, le=65535)
    agent_id: str = Field("echo-http", alias="ECHO_HTTP_AGENT_ID", min_length=1)
    rate_limit: int | None = Field(None, alias="ECHO_HTTP_RATE_LIMIT", ge=1)
    log_level: LogLevel = Field("INFO", alias="LOG_LEVEL")

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"


def _ms(config: dict[str, Any]) -> float:
    value = config.get("delay_ms", 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return max(0.0, float(value))


def create_app(settings: EchoHttpSettings | None = None) -> FastAPI:
    settings = settings or load_settings(EchoHttpSettings)
    app = FastAPI(title="echo-http", version=VERSION, summary="AI Spine's demo HTTP agent")
    # Calls per (execution_id, node_id) for ``http_status_times``; bounded, oldest first out.
    calls: OrderedDict[tuple[str, str], int] = OrderedDict()

    @app.get("/health")
    async def health() -> HttpHealth:
        return HttpHealth(
            agent_id=settings.agent_id,
            version=VERSION,
            capabilities=CAPABILITIES,
            ready=True,
            endpoint=settings.endpoint,
            rate_limit=settings.rate_limit,
        )

    @app.post("/execute", response_model=HttpExecuteResponse)
    async def execute(request: HttpExecuteRequest) -> HttpExecuteResponse | JSONResponse:
        started = time.perf_counter()
        config = request.config
        key = (request.execution_id, request.node_id)
        calls[key] = calls.pop(key, 0) + 1
        while len(calls) > _REMEMBERED_CALLS:
            calls.popitem(last=False)
        status = config.get("http_status")
        if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
            times = config.get("http_status_times")
            if not isinstance(times, int) or calls[key] <= times:
                headers = {}
                if isinstance(config.get("retry_after"), int | float):
                    headers["Retry-After"] = str(config["retry_after"])
                log.info("execute_forced_status", status=status, call=calls[key])
                return JSONResponse(
                    status_code=status,
                    content={"detail": f"echo-http: configured status {status}"},
                    headers=headers,
                )
        if config.get("hang") is True:
            await asyncio.sleep(HANG_SECONDS)
        delay = _ms(config)
        if delay:
            await asyncio.sleep(delay / 1000)
        metadata = {
            "agent_id": settings.agent_id,
            "node_id": request.node_id,
            "call": calls.get(key, 1),
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if config.get("fail") is True:
            return HttpExecuteResponse(
                status="error",
                output=HttpExecuteOutput(metadata=metadata),
                error_message="echo-http: configured to fail (fail: true)",
                execution_id=request.execution_id,
            )
        text = request.input.user_message
        return HttpExecuteResponse(
            status="success",
            output=HttpExecuteOutput(
                message=f"echo: {text}" if text else "echo",
                data={"input": request.input.model_dump(mode="json"), "config": config},
                metadata=metadata,
            ),
            execution_id=request.execution_id,
        )

    return app


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler that
    # was installed before it: make that a clean exit 0, like every other process of the stack.
    signal.signal(signal.SIGTERM, _stopped)
    settings = load_settings(EchoHttpSettings)
    configure_logging(settings.agent_id, settings.log_level)
    log.info("echo_http_starting", endpoint=settings.endpoint)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
