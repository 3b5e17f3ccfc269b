"""The relay: delivery to HTTP agents (docs/agents.md), its own process ``spine-relay``.

Kafka tasks of every registered HTTP agent become ``POST {endpoint}/execute`` calls and
their answers ``AgentResult``s; ``GET {endpoint}/health`` probes become the agent's
heartbeats. See :mod:`.app` for the wiring and :mod:`.delivery` for the call itself.
"""

from __future__ import annotations

from spine_servicekit.runtime import run_service
from spine_servicekit.settings import load_settings

from .settings import RelaySettings


def run() -> None:
    from .app import main

    run_service("relay", load_settings(RelaySettings), main)


__all__ = ["RelaySettings", "run"]
