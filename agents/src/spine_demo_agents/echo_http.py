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

Given the relay's public key (``ECHO_HTTP_RELAY_PUBLIC_KEY``: the PEM or base64 that
``spine-relay public-key`` prints, or ``ECHO_HTTP_RELAY_PUBLIC_KEY_FILE``), it answers only
calls the relay signed (:func:`spine_agent.http.verify_relay_signature`): an unsigned or
forged ``POST /execute`` gets ``401`` with the reason, before its body is even parsed. An
unsigned ``GET /health`` is still answered (container health checks make it; it tells
nothing), but a signed one must verify. Without a key every call is accepted, as the
original product did, and the start says so.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from spine_agent import LogLevel, configure_logging, get_logger, load_settings
from spine_agent.http import (
    SIGNATURE_HEADER,
    HttpExecuteOutput,
    HttpExecuteRequest,
    HttpExecuteResponse,
    HttpHealth,
    RelaySignatureError,
    load_public_key,
    verify_relay_signature,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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
    relay_public_key: str | None = Field(
        None,
        alias="ECHO_HTTP_RELAY_PUBLIC_KEY",
        description="the relay's public key (PEM or base64): only its signed calls are served",
    )
    relay_public_key_file: Path | None = Field(
        None, alias="ECHO_HTTP_RELAY_PUBLIC_KEY_FILE", description="the same, from a file"
    )
    signature_max_skew_s: float = Field(300.0, alias="ECHO_HTTP_SIGNATURE_MAX_SKEW", gt=0)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def relay_key(self) -> Ed25519PublicKey | None:
        """The key to verify calls with; None when none is configured (a bad one raises)."""
        if self.relay_public_key:
            return load_public_key(self.relay_public_key)
        if self.relay_public_key_file is not None:
            return load_public_key(self.relay_public_key_file.read_bytes())
        return None


def _ms(config: dict[str, Any]) -> float:
    value = config.get("delay_ms", 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return max(0.0, float(value))


def create_app(settings: EchoHttpSettings | None = None) -> FastAPI:
    settings = settings or load_settings(EchoHttpSettings)
    app = FastAPI(title="echo-http", version=VERSION, summary="AI Spine's demo HTTP agent")
    relay_key = settings.relay_key()

    def refusal(request: Request, body: bytes, required: bool) -> JSONResponse | None:
        """A 401 answer when the call must be, and is not, the relay's; else None."""
        if relay_key is None or (not required and SIGNATURE_HEADER not in request.headers):
            return None
        try:
            verify_relay_signature(
                relay_key,
                request.headers,
                body,
                settings.agent_id,
                max_skew_s=settings.signature_max_skew_s,
            )
        except RelaySignatureError as exc:
            log.warning("relay_signature_refused", path=request.url.path, reason=str(exc))
            return JSONResponse(status_code=401, content={"detail": f"echo-http: {exc}"})
        return None

    # Calls per (execution_id, node_id) for ``http_status_times``; bounded, oldest first out.
    calls: OrderedDict[tuple[str, str], int] = OrderedDict()

    @app.get("/health", response_model=HttpHealth)
    async def health(raw: Request) -> HttpHealth | JSONResponse:
        refused = refusal(raw, await raw.body(), required=False)
        if refused is not None:
            return refused
        return HttpHealth(
            agent_id=settings.agent_id,
            version=VERSION,
            capabilities=CAPABILITIES,
            ready=True,
            endpoint=settings.endpoint,
            rate_limit=settings.rate_limit,
        )

    @app.post("/execute", response_model=HttpExecuteResponse)
    async def execute(raw: Request) -> HttpExecuteResponse | JSONResponse:
        started = time.perf_counter()
        # the signature covers the exact bytes: verify them before anything parses them
        body = await raw.body()
        refused = refusal(raw, body, required=True)
        if refused is not None:
            return refused
        try:
            request = HttpExecuteRequest.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
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
    verifying = settings.relay_key() is not None
    log.info("echo_http_starting", endpoint=settings.endpoint, verifies_relay=verifying)
    if not verifying:
        log.warning(
            "echo_http_accepts_unsigned_calls",
            hint="set ECHO_HTTP_RELAY_PUBLIC_KEY (spine-relay public-key) to serve the relay only",
        )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
