"""Entry point: ``spine-registry`` (or ``python -m spine_registry``)."""

from __future__ import annotations

from spine_servicekit.runtime import run_service
from spine_servicekit.settings import load_settings

from .app import main
from .settings import RegistrySettings


def run() -> None:
    run_service("registry", load_settings(RegistrySettings), main)


if __name__ == "__main__":
    run()
