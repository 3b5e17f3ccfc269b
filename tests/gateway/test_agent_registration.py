"""An agent registration the relay could never serve is a 422 at the gateway (the registry
refuses it again on arrival: spine_contracts.agent_rules, one rule for both)."""

from __future__ import annotations

import pytest
from spine_gateway.errors import InvalidInput
from spine_gateway.models import RegisterAgentRequest
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
