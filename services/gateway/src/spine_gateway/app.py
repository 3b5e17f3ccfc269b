"""The FastAPI factory: its lifespan opens the gateway's parts (``wiring.py``: clients and
pools are opened there, never at import), the routers of every resource, the middleware,
and the one exception handler of the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from spine_servicekit import tracing
from spine_servicekit.kafka import instance_id
from spine_servicekit.logging import get_logger
from spine_servicekit.projector import Projector, ProjectorError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .deps import Gateway
from .errors import GatewayError, code_for_status, error_body
from .limits import BodySizeLimit
from .metrics import GatewayMetrics
from .routes import agents, audit, executions, flows, keys, ops, sockets, usage, users
from .settings import GatewaySettings
from .sockets import KeySockets
from .wiring import open_gateway

log = get_logger(__name__)
API_PREFIX = "/api/v1"
#: failures of Kafka, PostgreSQL, Redis or a projection: answered 503
UNAVAILABLE: tuple[type[Exception], ...] = (
    TimeoutError,
    OSError,
    KafkaError,
    ProjectorError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
)


def create_app(settings: GatewaySettings, *, replica_id: str | None = None) -> FastAPI:
    replica = replica_id or settings.instance_id or instance_id("gateway")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            gateway, projectors = await open_gateway(stack, settings, replica, app.state.metrics)
            await _catch_up(projectors, settings.catchup_timeout_s)
            app.state.gateway = gateway
            dev_task: asyncio.Task[None] | None = None
            if not settings.auth_required:
                dev_task = asyncio.create_task(_dev_user(gateway), name="gw-dev-user")
            log.info("gateway_ready", replica_id=replica, port=settings.port)
            try:
                yield
            finally:
                if dev_task is not None:
                    dev_task.cancel()
                    await asyncio.gather(dev_task, return_exceptions=True)

    # /docs and /redoc load their scripts from this package, not a CDN: they work offline
    app = FastAPIOffline(
        title="AI Spine",
        version=__version__,
        lifespan=lifespan,
        description="Event-driven orchestration of AI agents over Apache Kafka.",
    )
    app.state.settings = settings
    app.state.metrics = GatewayMetrics()
    app.state.sockets = KeySockets(settings.ws_max_per_key)
    _install_errors(app)
    # inside the observing middleware: a 413 is counted, and the error raised from a
    # streamed body's receive reaches the route as itself (not inside a task group's)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    _install_middleware(app)
    if tracing.ENABLED:
        app.add_middleware(tracing.TracingMiddleware)
    # every path under /api/v1 and, as the original served them, at the root
    app.include_router(ops.router)
    app.include_router(ops.router, prefix=API_PREFIX, include_in_schema=False)
    routers = (executions, sockets, flows, agents, users, keys, audit, usage)
    for router in (r.router for r in routers):
        app.include_router(router, prefix=API_PREFIX)
        app.include_router(router, include_in_schema=False)  # the original's root aliases
    return app


async def _dev_user(gateway: Gateway) -> None:
    try:
        await gateway.users.ensure_dev_user(
            gateway.settings.dev_user_id, gateway.settings.dev_user_credits
        )
    except Exception as exc:  # the dev user is a convenience; say why it is missing
        log.error("dev_user_failed", error=repr(exc))


def _error_response(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        response = _error_response(exc.status, exc.code, exc.message, **exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return _error_response(
            422, "VALIDATION_ERROR", f"invalid request: {where}: {first['msg']}", errors=errors
        )

    @app.exception_handler(ValidationError)
    async def model_invalid(_request: Request, exc: ValidationError) -> JSONResponse:
        return _error_response(
            422,
            "VALIDATION_ERROR",
            f"invalid value: {exc.error_count()} error(s)",
            errors=exc.errors(include_url=False, include_context=False),
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's "error parsing the body" (not UTF-8, not JSON): a bad body, answered
            # like every other one, so the API has one status for it
            return _error_response(
                422, "VALIDATION_ERROR", f"invalid request: body: {exc.detail}", errors=[]
            )
        response = _error_response(
            exc.status_code, code_for_status(exc.status_code), str(exc.detail)
        )
        response.headers.update(exc.headers or {})
        return response

    async def unavailable(_request: Request, exc: Exception) -> JSONResponse:
        # a dependency that is down or too slow is the caller's 503, never a 500
        log.warning("dependency_unavailable", error=repr(exc))
        return _error_response(
            503, "SERVICE_UNAVAILABLE", "a dependency did not answer in time; retry later"
        )

    for kind in UNAVAILABLE:
        app.add_exception_handler(kind, unavailable)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", exc_info=exc)
        return _error_response(500, "INTERNAL_ERROR", "internal error")


def _install_middleware(app: FastAPI) -> None:
    app.add_middleware(_Observe)


class _Observe:
    """Request metrics, rate-limit headers and usage records, as pure ASGI middleware:
    Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs every request through an
    extra task and memory stream (bench/README.md, "Measurements behind the code")."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                rate = state.get("rate")
                if rate is not None:
                    headers = MutableHeaders(scope=message)
                    for name, value in rate.headers().items():
                        if name not in headers:
                            headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self._record(scope, state, status, time.perf_counter() - started)

    @staticmethod
    def _record(scope: Scope, state: dict[str, Any], status: int, elapsed: float) -> None:
        app = scope["app"]
        route = scope.get("route")
        label = getattr(route, "path", "unmatched")
        method = scope["method"]
        metrics: GatewayMetrics = app.state.metrics
        metrics.requests.labels(method, label, str(status)).inc()
        metrics.latency.labels(label).observe(elapsed)
        user_id = state.get("usage_user")
        if user_id is not None:  # an authenticated user's request: usage, fire and forget
            gateway: Gateway = app.state.gateway
            gateway.users.record_usage(
                user_id,
                method=method,
                path=scope["path"],
                status_code=status,
                duration_ms=elapsed * 1000,
                credits=state.get("usage_credits", 0),
            )


async def _catch_up(projectors: Iterable[Projector], timeout_s: float) -> None:
    """Serve only once every projection has applied what was on the topics at start-up
    (read-your-writes holds from the first request); say how far it got every 10 s, since a
    gateway that was down for long replays a large backlog first."""
    started = time.monotonic()
    for projector in projectors:
        wait = asyncio.ensure_future(projector.wait_until_caught_up())
        while True:
            left = timeout_s - (time.monotonic() - started)
            if left <= 0:
                wait.cancel()
                raise TimeoutError(
                    f"projection {projector.name} did not catch up within {timeout_s:.0f} s "
                    "(SPINE_GATEWAY_CATCHUP_TIMEOUT)"
                )
            done, _ = await asyncio.wait({wait}, timeout=min(10.0, left))
            if done:
                wait.result()
                break
            log.info(
                "gateway_catching_up",
                projection=projector.name,
                applied=projector.stats.applied,
                elapsed_s=round(time.monotonic() - started, 1),
            )
