"""Entry point: ``spine-metrics`` (or ``python -m spine_metrics``)."""

from __future__ import annotations

from spine_servicekit.runtime import run_service
from spine_servicekit.settings import load_settings

from .app import main
from .settings import MetricsSettings


def run() -> None:
    run_service("metrics", load_settings(MetricsSettings), main)


if __name__ == "__main__":
    run()
