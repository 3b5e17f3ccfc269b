"""An agent registration the relay could never serve is a 422 at the gateway (the registry
refuses it again on arrival: spine_contracts.agent_rules, one rule for both); an agent is
shown active only once a beat said so, ``waiting`` before its first one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from spine_gateway.adapters.postgres import AgentRow
from spine_gateway.errors import InvalidInput
from spine_gateway.models import AgentView, RegisterAgentRequest
from spine_gateway.routes.agents import _info


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"name": "a", "endpoint": "file:///etc/passwd"}, "only http and https"),
        ({"name": "a", "endpoint": "gopher://x:70/"}, "only http and https"),
        ({"name": "a", "endpoint": "http:///nohost"}, "names no host"),
        ({"name": "a", "endpoint": "http://h:99999/"}, "endpoint"),
        ({"name": "a", "transport": "http"}, "needs an endpoint"),
        ({"name": "a", "agent_type": "wizard"}, "agent_type 'wizard'"),
    ],
)
def test_unservable_registrations_are_422(body: dict[str, str], said: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        _info(RegisterAgentRequest.model_validate(body))
    assert caught.value.code == "INVALID_AGENT" and said in caught.value.message


def test_a_servable_registration_passes() -> None:
    info = _info(RegisterAgentRequest(name="Scorer", endpoint="https://scorer.example:8443/"))
    assert info.agent_id == "scorer" and info.transport == "http"
    assert _info(RegisterAgentRequest(name="bus agent")).transport == "kafka"


@pytest.mark.parametrize(
    ("active", "seen", "status"),
    [
        (False, False, "waiting"),  # registered (or re-pointed): no beat about it yet
        (False, True, "inactive"),  # its probe failed, its beats said not ready or stopped
        (True, True, "active"),
    ],
)
def test_an_agents_status_says_whether_a_beat_ever_answered(
    active: bool, seen: bool, status: str
) -> None:
    row: AgentRow = {
        "agent_id": "web",
        "info": {"agent_id": "web", "name": "Web", "transport": "http", "endpoint": "https://w"},
        "active": active,
        "registered": True,
        "last_seen": datetime(2030, 1, 1, tzinfo=UTC) if seen else None,
        "owner": "u1",
    }
    view = AgentView.of(row)
    assert (view.status, view.active) == (status, active)
