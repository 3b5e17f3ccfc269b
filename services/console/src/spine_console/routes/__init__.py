"""The console's pages, one module per area; ``ROUTERS`` is what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from . import admin, agents, auth, executions, flows, run, usage

ROUTERS: list[APIRouter] = [
    auth.router,
    executions.router,
    run.router,
    flows.router,
    agents.router,
    usage.router,
    admin.router,
]
