"""The catalogue folds spine-admin's keys (pure): IssueAgent records a key and an owner,
never handing an id to another owner; RevokeAgentKey forgets the key and takes the agent
out; registrations keep the key; whose signature a message owes is the entry's call."""

from __future__ import annotations

import pytest
from spine_contracts import (
    AgentHeartbeat,
    AgentInfo,
    AgentRegistered,
    AgentStatusChanged,
    DeregisterAgent,
    IssueAgent,
    RegisterAgent,
    RevokeAgentKey,
    to_bytes,
    utcnow,
)
from spine_contracts.signing import RELAY_SIGNER, SignatureRefused, Signer, topic_base
from spine_registry.authenticity import RelayKey, expected_signer, misrouted, verify
from spine_registry.domain import Catalog, accepted, refused
from spine_registry.errors import RegistrationRefused

KEY, OTHER = Signer.generate(), Signer.generate()


def issue(agent_id: str, signer: Signer = KEY, owner: str | None = None) -> IssueAgent:
    return IssueAgent.build(agent_id=agent_id, public_key=signer.public_key_b64, owner=owner)


def test_issuing_creates_an_unregistered_entry_with_key_and_owner() -> None:
    catalog = Catalog()
    [entry] = catalog.decide(issue("a", owner="u1"), utcnow())
    assert isinstance(entry, AgentStatusChanged)
    d = entry.data
    assert (d.registered, d.active, d.owner) == (False, False, "u1")
    assert (d.public_key, d.key_id) == (KEY.public_key_b64, KEY.key_id)
    assert catalog.decide(issue("a", owner="u1"), utcnow()) == []  # the same again: nothing
    assert catalog.decide(issue("b"), utcnow())[0].data.owner == "system"  # new, no owner


def test_an_agents_own_registration_keeps_owner_and_key() -> None:
    catalog = Catalog()
    catalog.decide(issue("a", owner="u1"), utcnow())
    [entry] = catalog.decide(RegisterAgent.build(agent=AgentInfo(agent_id="a")), utcnow())
    assert isinstance(entry, AgentRegistered)
    assert (entry.data.owner, entry.data.key_id) == ("u1", KEY.key_id)
    assert not entry.data.active  # alive from its first heartbeat, not its registration


def test_issuing_never_moves_an_id_to_another_owner() -> None:
    catalog = Catalog()
    catalog.decide(issue("a", owner="u1"), utcnow())
    command = issue("a", OTHER, owner="u2")
    with pytest.raises(RegistrationRefused) as caught:
        catalog.decide(command, utcnow())
    assert caught.value.code == "AGENT_ID_TAKEN"
    assert catalog.agents["a"].key_id == KEY.key_id  # unchanged
    outcome = refused(command, caught.value)
    assert [a.data.action for a in outcome.audit] == ["agent.refused"] and outcome.reply is None
    # a new key for the same owner (a rotation) is taken
    [rotated] = catalog.decide(issue("a", OTHER), utcnow())
    assert rotated.data.key_id == OTHER.key_id and rotated.data.owner == "u1"


def test_revoking_forgets_the_key_and_takes_the_agent_out() -> None:
    catalog = Catalog()
    catalog.decide(issue("a"), utcnow())
    catalog.decide(RegisterAgent.build(agent=AgentInfo(agent_id="a")), utcnow())
    revoke = RevokeAgentKey.build(agent_id="a")
    [entry] = catalog.decide(revoke, utcnow())
    assert (entry.data.public_key, entry.data.active, entry.data.registered) == (None, False, True)
    outcome = accepted(revoke, [entry], catalog.agents["a"])
    assert [a.data.action for a in outcome.audit] == ["agent.key_revoked"]
    assert catalog.decide(RevokeAgentKey.build(agent_id="a"), utcnow()) == []
    assert catalog.decide(RevokeAgentKey.build(agent_id="nobody"), utcnow()) == []
    assert catalog.decide(revoke, utcnow()) == []  # a duplicate command


def test_whose_signature_a_message_owes() -> None:
    catalog = Catalog()
    catalog.decide(issue("k"), utcnow())
    catalog.decide(RegisterAgent.build(agent=AgentInfo(agent_id="k")), utcnow())
    web = AgentInfo(agent_id="web", transport="http", endpoint="https://web.example")
    catalog.decide(RegisterAgent.build(agent=web, owner="system"), utcnow())
    beat = AgentHeartbeat.build(agent_id="web", instance_id="i", transport="kafka")
    assert expected_signer(beat, catalog) == RELAY_SIGNER  # the entry decides, not the beat
    assert expected_signer(AgentHeartbeat.build(agent_id="k", instance_id="i"), catalog) == "k"
    assert expected_signer(RegisterAgent.build(agent=web, owner="u1"), catalog) is None
    assert expected_signer(RegisterAgent.build(agent=AgentInfo(agent_id="k")), catalog) == "k"


def test_the_relay_key_comes_from_its_entry() -> None:
    relay = RelayKey()
    [entry] = Catalog().decide(issue(RELAY_SIGNER, OTHER), utcnow())
    relay.apply(entry)
    assert relay.raw == OTHER.public_key
    catalog = Catalog()
    web = AgentInfo(agent_id="web", transport="http", endpoint="https://web.example")
    catalog.decide(RegisterAgent.build(agent=web, owner="system"), utcnow())
    beat = AgentHeartbeat.build(agent_id="web", instance_id="i", transport="http")
    value, topic = to_bytes(beat), "spine.registry.heartbeats"
    headers = OTHER.headers(topic_base(topic, ""), b"web", value)
    verify(beat, catalog, relay, headers, topic, b"web", value)  # the relay's key: fine
    with pytest.raises(SignatureRefused) as caught:
        verify(beat, catalog, RelayKey(), headers, topic, b"web", value)
    assert caught.value.reason == "unknown_key"


def test_an_owner_is_named_only_on_the_gateways_road() -> None:
    own = RegisterAgent.build(agent=AgentInfo(agent_id="a"))
    named = RegisterAgent.build(agent=AgentInfo(agent_id="a"), owner="system")
    assert misrouted(own, from_gateway=False) is None
    assert misrouted(named, from_gateway=True) is None
    assert "comes from the gateway" in (misrouted(named, from_gateway=False) or "")
    assert "names its owner" in (misrouted(own, from_gateway=True) or "")
    assert misrouted(DeregisterAgent.build(agent_id="a"), from_gateway=True) is None
