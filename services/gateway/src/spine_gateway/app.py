"""FastAPI application factory (the HTTP API grows in the gateway issue)."""

from __future__ import annotations

from fastapi import FastAPI

from .settings import GatewaySettings


def create_app(settings: GatewaySettings) -> FastAPI:
    app = FastAPI(title="AI Spine", version="0.1.0")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy", "service": "gateway"}

    return app
