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
        # a client sends a WebSocket only its auth message (sockets.py): no 16 MiB frames
        ws_max_size=65_536,
    )
    server = uvicorn.Server(config)
    # the runtime owns SIGTERM/SIGINT; uvicorn is told to exit when the service stops
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    serving = asyncio.create_task(_serve(server))
    stopping = asyncio.create_task(ctx.stopping.wait())
    done, _ = await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if serving in done:  # it ended on its own: a failed start-up is a failed process
        stopping.cancel()
        serving.result()
        raise GatewayStartupFailed("the HTTP server stopped on its own")
    server.should_exit = True
    await serving


class GatewayStartupFailed(RuntimeError):
    """uvicorn gave up (its lifespan failed: a dependency missing or too slow)."""


async def _serve(server: uvicorn.Server) -> None:
    # uvicorn answers a failed start-up with sys.exit() inside this task; a SystemExit in a
    # task escapes the event loop and left the process hanging in asyncio's shutdown,
    # alive (its pid file too) but serving nothing. Exit through the runtime instead.
    try:
        await server.serve()
    except SystemExit as exc:
        raise GatewayStartupFailed(f"start-up failed (uvicorn exit code {exc.code})") from None


def run() -> None:
    run_service("gateway", load_settings(GatewaySettings), main)


if __name__ == "__main__":
    run()
