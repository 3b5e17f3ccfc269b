"""The console's pages, one module per area; ``ROUTERS`` is what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from . import auth, executions

ROUTERS: list[APIRouter] = [auth.router, executions.router]
