"""Entry point: `spine-registry` (or `python -m spine_registry`)."""

from __future__ import annotations

from spine_servicekit.runtime import ServiceContext, run_service
from spine_servicekit.settings import CommonSettings, load_settings


async def main(ctx: ServiceContext) -> None:
    """Skeleton: connected, beating, waiting for a stop signal (filled by later issues)."""
    await ctx.stopping.wait()


def run() -> None:
    run_service("registry", load_settings(CommonSettings), main)


if __name__ == "__main__":
    run()
