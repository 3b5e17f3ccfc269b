"""Who may register and deregister an agent id (DESIGN §12), without I/O: a table of
command × asking owner × existing entry, then what goes with a decision (audit, answer)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from spine_contracts import (
    AgentDeregistered,
    AgentInfo,
    AgentRegistered,
    DeregisterAgent,
    RegisterAgent,
    utcnow,
)
from spine_registry.domain import Catalog, accepted, answered_again, refused
from spine_registry.errors import RegistrationRefused

SELF = None  # an agent's own registration (or the admin's deregistration): no owner


def register(
    owner: str | None, version: str = "2.0.0", request_id: str | None = "r1"
) -> RegisterAgent:
    info = AgentInfo(agent_id="a1", version=version)
    return RegisterAgent.build(actor="key_x", agent=info, owner=owner, request_id=request_id)


def deregister(owner: str | None, request_id: str | None = "r1") -> DeregisterAgent:
    return DeregisterAgent.build(actor="key_x", agent_id="a1", owner=owner, request_id=request_id)


def catalog_with(owner: str | None, *, tombstone: bool = False) -> Catalog:
    catalog = Catalog()
    if owner is None:
        return catalog
    info = AgentInfo(agent_id="a1")
    entry = (AgentDeregistered if tombstone else AgentRegistered).build(
        agent=info, registered=not tombstone, active=not tombstone, owner=owner
    )
    catalog.load(entry, utcnow())
    return catalog


STATES: dict[str, Callable[[], Catalog]] = {
    "new id": lambda: catalog_with(None),
    "system agent": lambda: catalog_with("system"),
    "u1's agent": lambda: catalog_with("u1"),
    "u1's tombstone": lambda: catalog_with("u1", tombstone=True),
}
# fmt: off
#: asking owner -> outcome per state: "registered by <owner>" (the entry's owner after it),
#: or the refusal's code
REGISTER: dict[str, tuple[str, str, str, str]] = {
    "self":  ("registered by system", "registered by system", "registered by u1",
              "registered by u1"),
    "admin": ("registered by system", "registered by system", "AGENT_ID_TAKEN",
              "AGENT_ID_TAKEN"),
    "u1":    ("registered by u1", "NOT_OWNER", "registered by u1", "registered by u1"),
    "u2":    ("registered by u2", "NOT_OWNER", "AGENT_ID_TAKEN", "AGENT_ID_TAKEN"),
}
DEREGISTER: dict[str, tuple[str, str, str, str]] = {
    "self":  ("AGENT_NOT_FOUND", "deregistered", "deregistered", "unchanged"),
    "u1":    ("AGENT_NOT_FOUND", "NOT_OWNER", "deregistered", "unchanged"),
    "u2":    ("AGENT_NOT_FOUND", "NOT_OWNER", "AGENT_NOT_FOUND", "AGENT_NOT_FOUND"),
}
# fmt: on
ASKING = {"self": SELF, "admin": "system", "u1": "u1", "u2": "u2"}


def cases(table: dict[str, tuple[str, str, str, str]]) -> list[object]:
    return [
        pytest.param(who, state, expected, id=f"{who} | {state}")
        for who, outcomes in table.items()
        for state, expected in zip(STATES, outcomes, strict=True)
    ]


@pytest.mark.parametrize(("who", "state", "expected"), cases(REGISTER))
def test_who_may_register_an_agent_id(who: str, state: str, expected: str) -> None:
    catalog = STATES[state]()
    before = catalog.agents.get("a1")
    cmd = register(ASKING[who])
    try:
        entries = catalog.decide(cmd, utcnow())
    except RegistrationRefused as exc:
        assert exc.code == expected
        assert catalog.agents.get("a1") == before  # a refusal changes nothing
        outcome = refused(cmd, exc)
        (audit,) = outcome.audit
        assert (audit.data.action, audit.data.detail["code"]) == ("agent.refused", expected)
        assert audit.data.owner == (ASKING[who] or "system") and audit.actor == "key_x"
        assert outcome.reply is not None and outcome.reply.data.error_code == expected
        if expected == "AGENT_ID_TAKEN":
            assert "belongs to another owner" in str(exc)
        return
    (entry,) = entries
    assert isinstance(entry, AgentRegistered)
    assert f"registered by {entry.data.owner}" == expected
    outcome = accepted(cmd, entries, catalog.agents["a1"])
    (audit,) = outcome.audit
    assert (audit.data.action, audit.data.owner) == ("agent.registered", entry.data.owner)
    assert audit.causation_id == str(cmd.message_id) and audit.actor == "key_x"
    assert outcome.reply is not None and outcome.reply.data.ok
    assert outcome.reply.data.body == {
        "agent_id": "a1",
        "owner": entry.data.owner,
        "registered": True,
        "changed": True,
    }


@pytest.mark.parametrize(("who", "state", "expected"), cases(DEREGISTER))
def test_who_may_deregister_an_agent(who: str, state: str, expected: str) -> None:
    catalog = STATES[state]()
    before = catalog.agents.get("a1")
    cmd = deregister(ASKING[who])
    try:
        entries = catalog.decide(cmd, utcnow())
    except RegistrationRefused as exc:
        assert exc.code == expected
        assert catalog.agents.get("a1") == before
        return
    outcome = accepted(cmd, entries, catalog.agents.get("a1"))
    if expected == "AGENT_NOT_FOUND":  # never registered: nothing to do, nothing audited
        assert entries == [] and outcome.audit == ()
        assert outcome.reply is not None and outcome.reply.data.error_code == expected
        return
    if expected == "unchanged":
        assert entries == [] and outcome.audit == ()
        assert outcome.reply is not None and outcome.reply.data.ok
        return
    (entry,) = entries
    assert isinstance(entry, AgentDeregistered) and not entry.data.registered
    assert entry.data.owner == before.owner  # type: ignore[union-attr]  # the tombstone keeps it
    (audit,) = outcome.audit
    assert audit.data.action == "agent.deregistered"


def test_the_tombstone_keeps_the_id_with_its_owner() -> None:
    catalog = Catalog()
    now = utcnow()
    catalog.decide(register("u1"), now)
    [tombstone] = catalog.decide(deregister("u1"), now)
    assert tombstone.data.owner == "u1"
    reloaded = Catalog()  # a restarted registry, from the compacted topic
    reloaded.load(tombstone, now)
    with pytest.raises(RegistrationRefused, match="belongs to another owner") as refusal:
        reloaded.decide(register("u2"), now)
    assert refusal.value.code == "AGENT_ID_TAKEN"
    [back] = reloaded.decide(register(SELF), now)  # the agent itself comes back: still u1's
    assert back.data.owner == "u1" and back.data.registered


def test_an_agents_own_registration_is_neither_audited_when_refused_nor_answered() -> None:
    cmd = register(SELF, request_id=None)
    outcome = refused(cmd, RegistrationRefused("agent_type 'x' is not one of ..."))
    assert outcome.audit == () and outcome.reply is None
    [entry] = Catalog().decide(cmd, utcnow())
    changed = accepted(cmd, [entry], Catalog().agents.get("a1"))
    assert changed.reply is None  # nobody waits; the change itself is audited
    catalog = Catalog()
    [entry] = catalog.decide(cmd, utcnow())
    (audit,) = accepted(cmd, [entry], catalog.agents["a1"]).audit
    assert audit.data.owner == "system"


def test_a_command_handled_twice_is_answered_again_and_audited_once() -> None:
    catalog = Catalog()
    cmd = register("u1")
    [entry] = catalog.decide(cmd, utcnow())
    first = accepted(cmd, [entry], catalog.agents["a1"])
    assert catalog.is_duplicate(cmd) and catalog.decide(cmd, utcnow()) == []
    again = answered_again(cmd, catalog.agents["a1"])
    assert again.audit == ()
    assert again.reply is not None and again.reply.data.body["repeated"] is True
    assert (
        first.audit[0].message_id
        == accepted(cmd, [entry], catalog.agents["a1"]).audit[0].message_id
    )


def test_forget_drops_the_agents_and_their_handled_commands() -> None:
    catalog = Catalog()
    mine, other = register("u1"), RegisterAgent.build(agent=AgentInfo(agent_id="b2"))
    catalog.decide(mine, utcnow())
    catalog.decide(other, utcnow())
    catalog.forget(lambda agent_id: agent_id == "a1")
    assert set(catalog.agents) == {"b2"}
    assert not catalog.is_duplicate(mine) and catalog.is_duplicate(other)
