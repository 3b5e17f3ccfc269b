"""The fold behind ``GET /agents``' tasks in flight (spine_gateway.agent_beats): only beats
signed by whoever speaks for the agent count, live instances only. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from spine_contracts import (
    AgentDeregistered,
    AgentHeartbeat,
    AgentInfo,
    AgentRegistered,
    to_bytes,
)
from spine_contracts.signing import RELAY_SIGNER, Signer
from spine_gateway.agent_beats import AgentActivity

BASE = "spine.registry.heartbeats"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def entry(agent_id: str, signer: Signer | None, transport: str = "kafka") -> AgentRegistered:
    return AgentRegistered.build(
        agent=AgentInfo(agent_id=agent_id, transport=transport),  # type: ignore[arg-type]
        registered=True,
        active=True,
        public_key=signer.public_key_b64 if signer is not None else None,
        key_id=signer.key_id if signer is not None else None,
    )


def beat(
    fold: AgentActivity,
    agent_id: str,
    instance: str,
    in_flight: int,
    signer: Signer | None,
    *,
    at: datetime = NOW,
    ready: bool = True,
) -> bool:
    message = AgentHeartbeat.build(
        agent_id=agent_id, instance_id=instance, in_flight=in_flight, ready=ready
    ).model_copy(update={"occurred_at": at})
    value, key = to_bytes(message), agent_id.encode()
    headers = list(signer.headers(BASE, key, value)) if signer is not None else []
    return fold.beat(message, headers, BASE, key, value)


def test_signed_beats_of_live_instances_add_up() -> None:
    echo = Signer.generate()
    fold = AgentActivity(stale_after_s=15)
    fold.catalogue(entry("echo", echo))
    assert beat(fold, "echo", "a", 3, echo, at=NOW - timedelta(seconds=2))
    assert beat(fold, "echo", "b", 4, echo, at=NOW - timedelta(seconds=1))
    assert beat(fold, "echo", "a", 5, echo, at=NOW)  # an instance's last beat replaces its first
    activity = fold.of("echo", NOW)
    assert (activity.tasks_in_flight, activity.instances) == (9, 2)
    assert activity.last_heartbeat_at == NOW


def test_a_beat_not_signed_by_the_agent_is_refused() -> None:
    echo, other = Signer.generate(), Signer.generate()
    fold = AgentActivity(stale_after_s=15)
    fold.catalogue(entry("echo", echo))
    assert not beat(fold, "echo", "x", 99, None)  # unsigned
    assert not beat(fold, "echo", "x", 99, other)  # another key: another agent's
    assert not beat(fold, "ghost", "x", 99, other)  # no entry: nobody vouches for it
    assert fold.of("echo", NOW).tasks_in_flight == 0
    assert fold.refused == 3


def test_an_http_agents_beats_are_the_relays() -> None:
    relay, agent = Signer.generate(), Signer.generate()
    fold = AgentActivity(stale_after_s=15)
    fold.catalogue(entry(RELAY_SIGNER, relay))
    fold.catalogue(entry("web", agent, transport="http"))
    assert not beat(fold, "web", "r", 2, agent)  # the entry says the relay speaks for it
    assert beat(fold, "web", "r", 2, relay)
    assert fold.of("web", NOW).tasks_in_flight == 2


def test_stale_or_not_ready_instances_hold_nothing_and_deregistering_forgets() -> None:
    echo = Signer.generate()
    fold = AgentActivity(stale_after_s=15)
    fold.catalogue(entry("echo", echo))
    beat(fold, "echo", "old", 7, echo, at=NOW - timedelta(seconds=16))
    beat(fold, "echo", "stopping", 1, echo, ready=False)
    beat(fold, "echo", "live", 2, echo)
    activity = fold.of("echo", NOW)
    assert (activity.tasks_in_flight, activity.instances) == (2, 1)
    assert activity.last_heartbeat_at == NOW
    gone = AgentDeregistered.build(agent=AgentInfo(agent_id="echo"), registered=False)
    fold.catalogue(gone)
    assert fold.of("echo", NOW).instances == 0
    assert not beat(fold, "echo", "live", 2, echo)  # no entry any more
