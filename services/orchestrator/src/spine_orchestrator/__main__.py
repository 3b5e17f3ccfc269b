"""Entry point: ``spine-orchestrator`` (or ``python -m spine_orchestrator``)."""

from __future__ import annotations

from spine_servicekit.runtime import run_service
from spine_servicekit.settings import load_settings

from .app import main
from .settings import OrchestratorSettings


def run() -> None:
    run_service("orchestrator", load_settings(OrchestratorSettings), main)


if __name__ == "__main__":
    run()
