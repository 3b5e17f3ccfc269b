"""Entry point: `spine-auth` (or `python -m spine_auth`)."""

from __future__ import annotations

from spine_servicekit.runtime import ServiceContext, run_service
from spine_servicekit.settings import load_settings

from .app import run_auth
from .settings import AuthSettings


async def main(ctx: ServiceContext) -> None:
    """Run the auth loop and its projector until the service is told to stop."""
    settings = ctx.settings
    if not isinstance(settings, AuthSettings):
        settings = load_settings(AuthSettings)
    await run_auth(ctx, settings)


def run() -> None:
    run_service("auth", load_settings(AuthSettings), main)


if __name__ == "__main__":
    run()
