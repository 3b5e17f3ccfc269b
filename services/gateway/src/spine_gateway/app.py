"""The gateway's only wiring: the FastAPI factory, its lifespan (clients and pools are
opened here, never at import) and the one exception handler of the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.asyncio import Redis
from spine_servicekit.kafka import KafkaConfig, instance_id, make_producer
from spine_servicekit.logging import get_logger
from spine_servicekit.postgres import create_pool
from spine_servicekit.projector import Projector
from starlette.exceptions import HTTPException as StarletteHTTPException

from .adapters.kafka import Heartbeats, Publisher, Replies
from .adapters.postgres import ReadModel
from .adapters.redis import RedisStore
from .errors import GatewayError, code_for_status, error_body
from .metrics import GatewayMetrics
from .projection import (
    Marks,
    agents_projection,
    executions_projection,
    flows_projection,
    users_projection,
)
from .routes import catalog, executions, ops, users
from .service import GatewayService, Projectors
from .settings import GatewaySettings

log = get_logger(__name__)
API_PREFIX = "/api/v1"


def create_app(settings: GatewaySettings, *, replica_id: str | None = None) -> FastAPI:
    replica = replica_id or settings.instance_id or instance_id("gateway")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            cfg = KafkaConfig.from_settings(settings, client_id="gateway")
            producer = make_producer(cfg)
            await producer.start()
            stack.push_async_callback(producer.stop)
            marks = Marks()
            projectors = Projectors(
                users=Projector(
                    cfg, settings.database_url, users_projection(marks), schema=settings.db_schema
                ),
                flows=Projector(
                    cfg, settings.database_url, flows_projection(), schema=settings.db_schema
                ),
                agents=Projector(
                    cfg, settings.database_url, agents_projection(marks), schema=settings.db_schema
                ),
                executions=Projector(
                    cfg,
                    settings.database_url,
                    executions_projection(marks),
                    schema=settings.db_schema,
                ),
            )
            for projector in projectors.all():  # one by one: they share the schema's ledger
                await projector.start()
                stack.push_async_callback(projector.stop)
            pool = await create_pool(
                settings.database_url,
                schema=settings.db_schema,
                application_name=f"gateway:{replica}",
                min_size=1,
                max_size=10,
            )
            stack.push_async_callback(pool.close)
            redis = Redis.from_url(settings.redis_url)
            stack.push_async_callback(redis.aclose)
            replies = Replies(cfg, replica)
            await replies.start()
            stack.push_async_callback(replies.stop)
            heartbeats = Heartbeats(cfg)
            await heartbeats.start()
            stack.push_async_callback(heartbeats.stop)
            service = GatewayService(
                settings,
                publisher=Publisher(cfg, producer),
                replies=replies,
                read=ReadModel(pool),
                store=RedisStore(redis, settings.topic_prefix),
                projectors=projectors,
                marks=marks,
                heartbeats=heartbeats,
            )
            async with asyncio.timeout(60):
                for projector in projectors.all():
                    await projector.wait_until_caught_up()
            app.state.service = service
            app.state.producer = producer
            dev_task: asyncio.Task[None] | None = None
            if not settings.auth_required:
                dev_task = asyncio.create_task(_dev_user(service), name="gw-dev-user")
            log.info("gateway_ready", replica_id=replica, port=settings.port)
            try:
                yield
            finally:
                if dev_task is not None:
                    dev_task.cancel()
                    await asyncio.gather(dev_task, return_exceptions=True)

    app = FastAPI(
        title="AI Spine",
        version="0.1.0",
        lifespan=lifespan,
        description="Event-driven orchestration of AI agents over Apache Kafka.",
    )
    app.state.settings = settings
    app.state.metrics = GatewayMetrics()
    _install_errors(app)
    _install_middleware(app)
    app.include_router(ops.router)
    for router in (executions.router, catalog.router, users.router):
        app.include_router(router, prefix=API_PREFIX)
        app.include_router(router, include_in_schema=False)  # the original's root aliases
    return app


async def _dev_user(service: GatewayService) -> None:
    try:
        await service.ensure_dev_user()
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
            errors=exc.errors(include_url=False),
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error_response(
            exc.status_code, code_for_status(exc.status_code), str(exc.detail)
        )
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", exc_info=exc)
        return _error_response(500, "INTERNAL_ERROR", "internal error")


def _install_middleware(app: FastAPI) -> None:
    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        rate = getattr(request.state, "rate", None)
        if rate is not None:
            for name, value in rate.headers().items():
                response.headers.setdefault(name, value)
        route = request.scope.get("route")
        label = getattr(route, "path", "unmatched")
        metrics: GatewayMetrics = request.app.state.metrics
        metrics.requests.labels(request.method, label, str(response.status_code)).inc()
        metrics.latency.labels(label).observe(time.perf_counter() - started)
        return response
