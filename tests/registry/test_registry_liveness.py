"""Liveness comes only from beats (pure, no I/O): a registration waits for its first
heartbeat or probe, a move to another endpoint or transport waits again, a probe of an
endpoint the agent has left changes nothing, a failing probe or silence takes it out."""

from __future__ import annotations

from datetime import timedelta

import pytest
from spine_contracts import (
    AgentHeartbeat,
    AgentInfo,
    AgentRegistered,
    AgentStatusChanged,
    DeregisterAgent,
    RegisterAgent,
    utcnow,
)
from spine_registry.domain import Catalog, Entry, same_place, vouches_for

OLD, NEW = "https://old.example:8443", "https://new.example:8443"
T0 = utcnow()
TTL = timedelta(seconds=15)


def http(endpoint: str = OLD, **fields: object) -> AgentInfo:
    return AgentInfo.model_validate(
        {"agent_id": "web", "transport": "http", "endpoint": endpoint, **fields}
    )


def bus(**fields: object) -> AgentInfo:
    return AgentInfo.model_validate({"agent_id": "bus", **fields})


def register(info: AgentInfo, owner: str | None = "system") -> RegisterAgent:
    return RegisterAgent.build(agent=info, owner=owner)


def probe(endpoint: str | None, ready: bool = True, reason: str | None = None) -> AgentHeartbeat:
    """The relay's beat: the verdict of one probe of ``endpoint``."""
    return AgentHeartbeat.build(
        agent_id="web",
        instance_id="relay-1",
        transport="http",
        ready=ready,
        endpoint=endpoint,
        reason=reason,
    )


def heartbeat(ready: bool = True) -> AgentHeartbeat:
    return AgentHeartbeat.build(agent_id="bus", instance_id="i1", ready=ready)


def active(entries: list[Entry]) -> list[bool]:
    return [e.data.active for e in entries]


def test_a_new_http_agent_waits_for_its_first_successful_probe() -> None:
    catalog = Catalog()
    [registered] = catalog.decide(register(http()), T0)
    assert isinstance(registered, AgentRegistered)
    assert (registered.data.active, registered.data.last_seen) == (False, None)
    assert registered.data.reason == f"registered: waiting for a successful probe of {OLD}"
    assert catalog.sweep(T0 + 2 * TTL, TTL) == []  # waiting is not a liveness to lose
    [up] = catalog.decide(probe(OLD), T0)
    assert isinstance(up, AgentStatusChanged)
    assert (up.data.active, up.data.last_seen, up.data.reason) == (True, T0, "heartbeat: ready")


def test_a_new_bus_agent_waits_for_its_first_heartbeat() -> None:
    """Its own registration is no heartbeat, nor is the gateway's (no process behind it)."""
    for owner in (None, "u1"):
        catalog = Catalog()
        [registered] = catalog.decide(register(bus(), owner), T0)
        assert not registered.data.active
        assert registered.data.reason == "registered: waiting for its first heartbeat"
        assert active(catalog.decide(heartbeat(), T0)) == [True]


def test_a_first_failing_probe_is_recorded_and_the_agent_never_becomes_active() -> None:
    catalog = Catalog()
    catalog.decide(register(http()), T0)
    why = f"connection refused: GET {OLD}/health"
    [verdict] = catalog.decide(probe(OLD, ready=False, reason=why), T0)
    assert isinstance(verdict, AgentStatusChanged)
    assert (verdict.data.active, verdict.data.last_seen) == (False, T0)
    assert verdict.data.reason == f"heartbeat: not ready ({why})"
    for _ in range(3):  # later failures change nothing: the entry says so already
        assert catalog.decide(probe(OLD, ready=False, reason=why), T0) == []
    assert not catalog.agents["web"].active


def test_a_failing_probe_or_silence_takes_an_active_agent_out() -> None:
    catalog = Catalog()
    catalog.decide(register(http()), T0)
    catalog.decide(probe(OLD), T0)
    assert active(catalog.decide(probe(OLD, ready=False, reason="HTTP 503"), T0)) == [False]
    assert active(catalog.decide(probe(OLD), T0)) == [True]
    assert catalog.sweep(T0 + TTL, TTL) == []
    [gone] = catalog.sweep(T0 + TTL + timedelta(seconds=1), TTL)
    assert not gone.data.active and gone.data.reason == "no heartbeat for 15s"


def test_re_pointing_an_active_http_agent_takes_it_out_until_the_new_endpoint_answers() -> None:
    catalog = Catalog()
    catalog.decide(register(http(OLD)), T0)
    catalog.decide(probe(OLD), T0)
    [moved] = catalog.decide(register(http(NEW)), T0)
    assert isinstance(moved, AgentRegistered)
    assert (moved.data.active, moved.data.last_seen) == (False, None)  # at once, on itself
    assert moved.data.reason == f"registered: waiting for a successful probe of {NEW}"
    # the probe of the old endpoint that was in flight lands now: stale, nothing changes
    assert catalog.decide(probe(OLD), T0) == []
    assert catalog.decide(probe(OLD, ready=False), T0) == []
    assert catalog.decide(probe(None), T0) == []  # a beat naming no endpoint vouches for none
    assert not catalog.agents["web"].active and catalog.agents["web"].last_seen is None
    assert active(catalog.decide(probe(NEW), T0)) == [True]


def test_re_pointing_at_a_dead_endpoint_stays_inactive() -> None:
    catalog = Catalog()
    catalog.decide(register(http(OLD)), T0)
    catalog.decide(probe(OLD), T0)
    catalog.decide(register(http(NEW)), T0)
    [failed] = catalog.decide(probe(NEW, ready=False, reason="connection refused"), T0)
    assert not failed.data.active and failed.data.last_seen == T0
    assert catalog.decide(probe(OLD), T0) == []  # the old one still answering counts not
    assert catalog.sweep(T0 + 2 * TTL, TTL) == []
    assert not catalog.agents["web"].active


def test_re_registering_in_the_same_place_keeps_the_liveness() -> None:
    catalog = Catalog()
    catalog.decide(register(http(OLD)), T0)
    catalog.decide(probe(OLD), T0)
    [updated] = catalog.decide(register(http(OLD, description="now described")), T0)
    assert (updated.data.active, updated.data.last_seen, updated.data.reason) == (
        True,
        T0,
        "registered",
    )
    catalog.decide(register(bus()), T0)
    catalog.decide(heartbeat(), T0)
    [restarted] = catalog.decide(register(bus(version="2.0.0"), owner=None), T0)
    assert restarted.data.active  # an SDK restart with a new version: its beats go on


def test_moving_between_transports_waits_again() -> None:
    catalog = Catalog()
    catalog.decide(register(http(OLD)), T0)
    catalog.decide(probe(OLD), T0)
    [on_the_bus] = catalog.decide(register(AgentInfo(agent_id="web")), T0)
    assert not on_the_bus.data.active
    assert catalog.decide(probe(OLD), T0) == []  # the relay's last probe: stale
    kafka_beat = AgentHeartbeat.build(agent_id="web", instance_id="i1", transport="kafka")
    assert active(catalog.decide(kafka_beat, T0)) == [True]


def test_a_re_registration_after_deregistration_waits_again() -> None:
    catalog = Catalog()
    catalog.decide(register(bus()), T0)
    catalog.decide(heartbeat(), T0)
    catalog.decide(DeregisterAgent.build(agent_id="bus"), T0)
    assert catalog.decide(heartbeat(), T0) == []  # a beat registers nothing
    [back] = catalog.decide(register(bus()), T0)
    assert (back.data.active, back.data.last_seen) == (False, None)


@pytest.mark.parametrize(
    ("old", "new", "same"),
    [
        (http(OLD), http(OLD, description="x", version="2"), True),
        (http(OLD), http(NEW), False),
        (http(OLD), AgentInfo(agent_id="web"), False),
        (bus(), bus(capabilities=("y",)), True),
        (bus(), AgentInfo(agent_id="bus", transport="http", endpoint=OLD), False),
    ],
)
def test_same_place(old: AgentInfo, new: AgentInfo, same: bool) -> None:
    assert same_place(old, new) is same


def test_which_beats_vouch_for_a_registration() -> None:
    assert vouches_for(probe(OLD), http(OLD))
    assert not vouches_for(probe(NEW), http(OLD))
    assert not vouches_for(probe(None), http(OLD))
    assert vouches_for(heartbeat(), bus())
    assert not vouches_for(probe(OLD), bus())
