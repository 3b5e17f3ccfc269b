"""The orchestrator's view of the agent catalogue: availability and owner per agent."""

from __future__ import annotations

from spine_contracts import AgentDeregistered, AgentInfo, AgentRegistered
from spine_orchestrator.catalog import AgentCatalog


def test_the_owner_comes_from_the_entry_and_outlives_the_deregistration() -> None:
    catalog = AgentCatalog()
    info = AgentInfo(agent_id="mine")
    catalog.apply(AgentRegistered.build(agent=info, active=True, owner="u1"))
    catalog.apply(AgentRegistered.build(agent=AgentInfo(agent_id="echo"), active=True))
    assert (catalog.owner("mine"), catalog.availability("mine")) == ("u1", "active")
    assert catalog.owner("echo") == "system"  # entries written before owners existed, too
    catalog.apply(AgentDeregistered.build(agent=info, registered=False, owner="u1"))
    assert (catalog.owner("mine"), catalog.availability("mine")) == ("u1", "deregistered")
    assert catalog.owner("nobody") is None
