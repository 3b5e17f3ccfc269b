"""Entry point: ``spine-gateway`` (or ``python -m spine_gateway``)."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn
from spine_servicekit.runtime import ServiceContext, run_service
from spine_servicekit.settings import load_settings

from .app import create_app
from .settings import GatewaySettings


async def main(ctx: ServiceContext) -> None:
    settings = ctx.settings
    assert isinstance(settings, GatewaySettings)
    config = uvicorn.Config(
        create_app(settings, replica_id=ctx.instance_id),
        host=settings.api_host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # the runtime owns SIGTERM/SIGINT; uvicorn is told to exit when the service stops
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve())
    await ctx.stopping.wait()
    server.should_exit = True
    await serving


def run() -> None:
    run_service("gateway", load_settings(GatewaySettings), main)


if __name__ == "__main__":
    run()
