"""``spine-console``: serve the console with uvicorn."""

from __future__ import annotations

import uvicorn

from .app import create_app
from .settings import load


def run() -> None:
    settings = load()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
    )


if __name__ == "__main__":
    run()
