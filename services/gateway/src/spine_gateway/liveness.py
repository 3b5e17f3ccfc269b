"""What ``/status`` expects to be running, and what is missing from it. Pure: the beats and
the agent catalogue are read by the caller (``operations.py``).

The deployment names what it runs in ``SPINE_EXPECTED_SERVICES`` (``make up``, compose and
Kubernetes set it; docs/deploy.md): a comma list of

* service names (``gateway``, ``orchestrator``, ``registry``, ``auth``, ``metrics``,
  ``relay``): present while one of their instances beats on ``spine.services.heartbeats``
  (a beat younger than the stale window, not ``stopping``);
* ``agent:<agent_id>`` for a system agent (``agent:echo``): present while the registry says
  the agent is active (it follows the agent's signed beats, ``SPINE_REGISTRY_HEARTBEAT_TTL``).
  Only a ``system`` agent counts: a tenant's agent never makes ``/status`` degraded.

Unset (or blank) it is :data:`CORE_SERVICES`, the five services every installation runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

AGENT_PREFIX = "agent:"
#: what an installation runs at the least: the default of ``SPINE_EXPECTED_SERVICES``
CORE_SERVICES = ("gateway", "orchestrator", "registry", "auth", "metrics")
#: a service name or an agent id (agent ids have no ".", DESIGN §12)
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class ExpectedListError(ValueError):
    """``SPINE_EXPECTED_SERVICES`` names something that cannot be a service or an agent."""


@dataclass(frozen=True)
class Expected:
    """The services (by heartbeat name) and system agents (by id) a deployment runs."""

    services: tuple[str, ...] = CORE_SERVICES
    agents: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> Expected:
        """``"gateway, orchestrator, agent:echo"``; blank or ``None``: the core services."""
        entries = [e.strip() for e in (text or "").split(",") if e.strip()]
        if not entries:
            return cls()
        services: list[str] = []
        agents: list[str] = []
        for entry in entries:
            is_agent = entry.startswith(AGENT_PREFIX)
            name = entry.removeprefix(AGENT_PREFIX) if is_agent else entry
            if not _NAME.match(name):
                raise ExpectedListError(
                    f"{entry!r} is neither a service name nor agent:<agent_id> "
                    "(letters, digits, '_' and '-')"
                )
            chosen = agents if is_agent else services
            if name not in chosen:
                chosen.append(name)
        return cls(tuple(services), tuple(agents))

    @property
    def names(self) -> list[str]:
        """Every entry as ``SPINE_EXPECTED_SERVICES`` spells it."""
        return [*self.services, *(AGENT_PREFIX + a for a in self.agents)]

    def missing(self, services_up: Iterable[str], agents_up: Iterable[str]) -> list[str]:
        """The entries with nothing running: no live instance of the service, or the system
        agent not active. Whatever is up but not expected changes nothing."""
        beating, active = set(services_up), set(agents_up)
        return [
            *(s for s in self.services if s not in beating),
            *(AGENT_PREFIX + a for a in self.agents if a not in active),
        ]


def is_live(status: str, age_s: float, stale_after_s: float) -> bool:
    """Whether an instance whose last beat said ``status``, ``age_s`` ago, still runs: it
    said goodbye (``stopping``) or fell silent for longer than the stale window."""
    return status != "stopping" and age_s <= stale_after_s
