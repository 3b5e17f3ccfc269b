"""The console's pages, one module per area; ``ROUTERS`` is what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from . import auth, executions, run

ROUTERS: list[APIRouter] = [auth.router, executions.router, run.router]
