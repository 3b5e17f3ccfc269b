"""Registrations the catalogue refuses: endpoint scheme and agent type (docs/agents.md)."""

from __future__ import annotations

import pytest
from spine_contracts import AgentInfo, AgentRegistered, RegisterAgent, utcnow
from spine_registry.domain import Catalog
from spine_registry.errors import RegistrationRefused


def register(**fields: object) -> RegisterAgent:
    info = AgentInfo.model_validate({"agent_id": "a1", **fields})
    return RegisterAgent.build(agent=info)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"transport": "http", "endpoint": "file:///etc/passwd"},
            "only http and https endpoints are accepted",
        ),
        (
            {"transport": "http", "endpoint": "gopher://10.0.0.1:70/"},
            "only http and https endpoints are accepted",
        ),
        ({"transport": "http", "endpoint": "http://"}, "names no host"),
        ({"transport": "http", "endpoint": "http://agent.test:99999"}, "out of range"),
        ({"transport": "http"}, "an HTTP agent needs an endpoint"),
        (
            {"agent_type": "superuser"},
            "agent_type 'superuser' is not one of input, processor, conditional, output",
        ),
    ],
)
def test_refused_registrations_change_nothing(fields: dict[str, object], reason: str) -> None:
    catalog = Catalog()
    with pytest.raises(RegistrationRefused, match=reason):
        catalog.decide(register(**fields), utcnow())
    assert catalog.agents == {}


@pytest.mark.parametrize(
    "fields",
    [
        {"transport": "http", "endpoint": "http://agent.test:8080"},
        {"transport": "http", "endpoint": "HTTPS://agent.test/base"},
        {"agent_type": "input"},
        {"agent_type": "conditional"},
        {"agent_type": "output"},
        {},
    ],
)
def test_accepted_registrations(fields: dict[str, object]) -> None:
    [entry] = Catalog().decide(register(**fields), utcnow())
    assert isinstance(entry, AgentRegistered)
