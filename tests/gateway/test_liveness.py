"""What ``/status`` expects and what it calls missing (``liveness.py``,
``SPINE_EXPECTED_SERVICES``), which beats it still lists (``Heartbeats.live``), and the code
every view gets (``OperationsService.status``) — on fakes of the read model and the probes,
no I/O. Over real processes: ``tests/e2e/test_status_e2e.py``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from spine_contracts import ServiceHeartbeat
from spine_gateway.adapters.kafka import Heartbeats
from spine_gateway.liveness import CORE_SERVICES, Expected, ExpectedListError, is_live
from spine_gateway.operations import Observers, OperationsService
from spine_gateway.policy import OpsView
from spine_gateway.settings import GatewaySettings
from spine_kafka.security import KafkaSecurity
from spine_servicekit.kafka import KafkaConfig

CFG = KafkaConfig("127.0.0.1:1", security=KafkaSecurity())  # never connected


@pytest.mark.parametrize("unset", [None, "", " , "])
def test_unset_or_blank_expects_the_five_core_services(unset: str | None) -> None:
    assert Expected.parse(unset) == Expected(CORE_SERVICES, ())
    assert CORE_SERVICES == ("gateway", "orchestrator", "registry", "auth", "metrics")


def test_a_list_names_services_and_system_agents_once_each() -> None:
    expected = Expected.parse(" gateway,relay , agent:echo,agent:zoe,relay,agent:echo ")
    assert expected == Expected(("gateway", "relay"), ("echo", "zoe"))
    assert expected.names == ["gateway", "relay", "agent:echo", "agent:zoe"]


@pytest.mark.parametrize("bad", ["agent:", "agent:a.b", "gate way", "orchestrator,ok/no"])
def test_what_cannot_be_a_service_or_an_agent_is_refused(bad: str) -> None:
    with pytest.raises(ExpectedListError):
        Expected.parse(bad)


def test_the_gateway_setting_is_checked_when_read() -> None:
    settings = GatewaySettings(API_KEY="k" * 20, SPINE_EXPECTED_SERVICES="gateway,agent:echo")
    assert settings.expected == Expected(("gateway",), ("echo",))
    assert GatewaySettings(API_KEY="k" * 20).expected.services == CORE_SERVICES
    with pytest.raises(ValidationError, match="SPINE_EXPECTED_SERVICES|expected_services"):
        GatewaySettings(API_KEY="k" * 20, SPINE_EXPECTED_SERVICES="agent:")


def test_missing_is_what_is_expected_and_not_running_only() -> None:
    expected = Expected(("gateway", "orchestrator", "registry"), ("echo", "eddie"))
    assert expected.missing(["gateway", "registry", "spare"], ["echo", "tenant-bot"]) == [
        "orchestrator",
        "agent:eddie",
    ]
    everything = ["gateway", "orchestrator", "registry"]
    assert expected.missing([*everything, "orchestrator"], ["echo", "eddie"]) == []


@pytest.mark.parametrize(
    ("status", "age", "live"),
    [("ok", 0.0, True), ("degraded", 14.9, True), ("ok", 15.1, False), ("stopping", 0.0, False)],
)
def test_an_instance_is_live_while_it_beats_and_has_not_said_goodbye(
    status: str, age: float, live: bool
) -> None:
    assert is_live(status, age, 15.0) is live


def _beat(service: str, instance: str, *, age_s: float = 0, status: str = "ok") -> ServiceHeartbeat:
    now = datetime.now(UTC)
    beat = ServiceHeartbeat.build(
        service=service, instance_id=instance, started_at=now - timedelta(hours=1), status=status
    )
    return beat.model_copy(update={"occurred_at": now - timedelta(seconds=age_s)})


def _heartbeats(*beats: ServiceHeartbeat) -> Heartbeats:
    heartbeats = Heartbeats(CFG)
    for beat in beats:
        heartbeats._apply(beat, None)  # type: ignore[arg-type]  # the record is not read
    return heartbeats


def test_stale_and_stopped_instances_age_out_of_the_list_and_the_memory() -> None:
    heartbeats = _heartbeats(
        _beat("orchestrator", "orc-new", age_s=1),
        _beat("orchestrator", "orc-old", age_s=3600),
        _beat("registry", "reg-gone", status="stopping"),
    )
    live = heartbeats.live(datetime.now(UTC).timestamp(), stale_after_s=15)
    assert [b.data.instance_id for b, _age in live] == ["orc-new"]
    assert set(heartbeats.last) == {"orc-new"}
    heartbeats._apply(_beat("registry", "reg-back"), None)  # type: ignore[arg-type]
    live = heartbeats.live(datetime.now(UTC).timestamp(), stale_after_s=15)
    assert [b.data.instance_id for b, _age in live] == ["orc-new", "reg-back"]


class _Read:
    """The read model's agent catalogue: ``agents_of`` as PostgreSQL answers it."""

    def __init__(self, rows: list[dict[str, Any]] | None = None, fail: bool = False) -> None:
        self.rows = rows or []
        self.fail = fail

    async def agents_of(self, owner: str, agent_ids: Sequence[str]) -> list[dict[str, Any]]:
        if self.fail:
            raise OSError("connection refused")
        return [r for r in self.rows if r["owner"] == owner and r["agent_id"] in agent_ids]


def _operations(
    expected: str, beats: list[ServiceHeartbeat], read: _Read, *, probes_ok: bool = True
) -> OperationsService:
    async def ok() -> None:
        return None

    async def down() -> None:
        raise OSError("down")

    return OperationsService(
        read=read,  # type: ignore[arg-type]
        observers=Observers(
            heartbeats=_heartbeats(*beats),
            summary=None,  # type: ignore[arg-type]  # not read by /status
            lag=None,  # type: ignore[arg-type]  # not read by the liveness view
            usage=None,  # type: ignore[arg-type]
        ),
        projectors=[],
        probes={"kafka": ok, "postgresql": ok, "redis": ok if probes_ok else down},
        metrics=None,  # type: ignore[arg-type]
        heartbeat_interval_s=5.0,
        expected=Expected.parse(expected),
    )


def _agent(agent_id: str, owner: str, active: bool) -> dict[str, Any]:
    return {"agent_id": agent_id, "owner": owner, "active": active, "last_seen": None}


async def test_the_liveness_view_is_degraded_when_an_expected_one_is_missing() -> None:
    beats = [_beat("gateway", "gw-1"), _beat("orchestrator", "orc-1", age_s=60)]
    catalogue = _Read([_agent("echo", "system", True), _agent("bot", "user-1", False)])
    body, healthy = await _operations("gateway,orchestrator,agent:echo", beats, catalogue).status(
        OpsView.LIVENESS
    )
    assert not healthy and body["status"] == "degraded"
    assert set(body) == {"status", "version", "uptime"}  # no names without the master key
    beats.append(_beat("orchestrator", "orc-2"))
    body, healthy = await _operations("gateway,orchestrator,agent:echo", beats, catalogue).status(
        OpsView.LIVENESS
    )
    assert healthy and body["status"] == "healthy"  # the tenant's inactive bot changes nothing


async def test_a_tenants_agent_never_stands_in_for_a_system_one() -> None:
    beats = [_beat("gateway", "gw-1")]
    catalogue = _Read([_agent("echo", "user-1", True)])
    body, healthy = await _operations("gateway,agent:echo", beats, catalogue).status(
        OpsView.LIVENESS
    )
    assert not healthy


async def test_the_agents_cannot_be_read_then_nothing_is_known_to_run() -> None:
    ops = _operations("gateway,agent:echo", [_beat("gateway", "gw-1")], _Read(fail=True))
    presence = await ops.presence()
    assert presence.missing == ["agent:echo"]
    assert presence.agents == [{"agent_id": "echo", "active": False, "error": "OSError"}]
    # nothing expected of the catalogue: it is not read at all
    ops = _operations("gateway", [_beat("gateway", "gw-1")], _Read(fail=True))
    assert (await ops.presence()).missing == []


async def test_a_component_down_is_degraded_with_everything_running() -> None:
    ops = _operations("gateway", [_beat("gateway", "gw-1")], _Read(), probes_ok=False)
    body, healthy = await ops.status(OpsView.LIVENESS)
    assert not healthy and body["status"] == "degraded"
