"""Execute answers from the decoded start, before the read model stores it; an accepted
execution is never a 404 for its owner: reads wait for the projection, then answer 503
(retry). A read never shows less than the execution's stream already showed. Fakes of the
ports; no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from aiokafka import TopicPartition
from crash.helpers import execution_trail
from spine_contracts.access import USER_SCOPES
from spine_gateway.cache import ReadCache
from spine_gateway.errors import NotFound, Unavailable
from spine_gateway.executions import ExecutionsService
from spine_gateway.idempotency import Idempotency
from spine_gateway.identity import Principal
from spine_gateway.live import LiveTrail
from spine_gateway.pricing import Pricing
from spine_gateway.visibility import ReadYourWrites
from spine_servicekit.projector import Incoming

FLOWS = Path(__file__).resolve().parents[2] / "flows"


class FakeRead:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.flows: dict[str, dict[str, Any]] = {}

    async def execution(self, execution_id: str) -> dict[str, Any] | None:
        return self.rows.get(execution_id)

    async def flow(self, flow_id: str) -> dict[str, Any] | None:
        return self.flows.get(flow_id)


class FakeStore:
    def __init__(self) -> None:
        self.accepted: dict[str, str] = {}

    async def accepted_by(self, execution_id: str) -> str | None:
        return self.accepted.get(execution_id)

    async def mark_accepted(self, execution_id: str, user_id: str, ttl_s: int) -> None:
        self.accepted[execution_id] = user_id


class FakeProjector:
    """``wait_for`` returns once ``applied`` satisfies the predicate (re-checked on ``apply``)."""

    def __init__(self) -> None:
        self.applied: dict[Any, int] = {}
        self.changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[Mapping[Any, int]], bool]) -> None:
        while not predicate(self.applied):
            self.changed.clear()
            await self.changed.wait()

    async def wait_for_offsets(self, targets: Mapping[Any, int]) -> None:
        await self.wait_for(
            lambda applied: all(applied.get(t, -1) >= n for t, n in targets.items())
        )

    def applied_offsets(self) -> dict[Any, int]:
        return dict(self.applied)

    def apply(self, tp: Any, offset: int) -> None:
        self.applied[tp] = offset
        self.changed.set()


class FakeMarks:
    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], tuple[str, int]] = {}

    def get(self, kind: str, key: str) -> tuple[str, int] | None:
        return self.marks.get((kind, key))

    def message(self, kind: str, key: str) -> Any:
        return None


class FakeCommands:
    """Auth's reply to a reservation: ``None`` never comes; else accepted."""

    def __init__(self) -> None:
        self.on_request: Callable[[Any], None] | None = None

    async def request(self, _spec: Any, _key: str, cmd: Any, _rid: str, **_: Any) -> Any:
        if self.on_request is None:
            raise AssertionError("no command expected")
        self.on_request(cmd)
        return SimpleNamespace(data=SimpleNamespace(ok=True))


class Ports:
    def __init__(self) -> None:
        self.read, self.store = FakeRead(), FakeStore()
        self.projector, self.marks = FakeProjector(), FakeMarks()
        self.live = LiveTrail()
        self.commands = FakeCommands()
        unused: Any = None
        self.service = ExecutionsService(
            commands=self.commands,  # type: ignore[arg-type]
            read=self.read,  # type: ignore[arg-type]
            store=self.store,  # type: ignore[arg-type]
            rw=ReadYourWrites(self.marks, self.live, 0.3),  # type: ignore[arg-type]
            idempotency=Idempotency(unused, ttl_s=60, wait_s=1),  # no key: no store
            executions=self.projector,  # type: ignore[arg-type]
            live=self.live,
            flows=ReadCache(),
            start_timeout_s=0.3,
            pricing=Pricing(),
        )


def user(user_id: str) -> Principal:
    row: Any = {"user_id": user_id}
    return Principal("user", f"key_{user_id}", frozenset(USER_SCOPES), user=row)


OWNER, OTHER = user("u1"), user("u2")


def executing_ports(on_request: Callable[[Any], None] = lambda _cmd: None) -> Ports:
    """Ports with the echo_chain flow, where auth accepts every reservation; ``on_request``
    sees the command first (what the other services did before the reply came)."""
    p = Ports()
    definition = yaml.safe_load((FLOWS / "echo_chain.yaml").read_text())
    p.read.flows["echo_chain"] = {
        "flow_version": "v1",
        "definition": definition,
        "owner": "system",
    }

    p.commands.on_request = on_request
    return p


async def test_the_owner_waits_until_the_projection_shows_it() -> None:
    p = Ports()
    p.store.accepted["e1"] = "u1"
    read = asyncio.create_task(p.service.own(OWNER, "e1"))
    await asyncio.sleep(0)  # the read is waiting now
    assert not read.done()
    p.read.rows["e1"] = {"execution_id": "e1", "user_id": "u1", "status": "running"}
    p.marks.marks[("execution", "e1")] = ("events/0", 5)
    p.projector.apply("events/0", 5)
    row = await asyncio.wait_for(read, 5)
    assert row["status"] == "running"


async def test_still_invisible_after_the_wait_is_503_not_404() -> None:
    p = Ports()
    p.store.accepted["e1"] = "u1"
    with pytest.raises(Unavailable) as caught:
        await p.service.own(OWNER, "e1")
    assert caught.value.status == 503 and "retry" in str(caught.value)


async def test_another_user_and_an_unknown_id_are_404_at_once() -> None:
    p = Ports()
    p.store.accepted["e1"] = "u1"
    for user, eid in ((OTHER, "e1"), (OWNER, "e2")):
        with pytest.raises(NotFound):
            await asyncio.wait_for(p.service.own(user, eid), 0.1)  # no waiting


async def test_a_read_after_a_streamed_event_waits_until_the_read_model_has_it() -> None:
    p = Ports()
    trail = execution_trail("e1", datetime(2026, 12, 6, tzinfo=UTC))
    tp = TopicPartition("events", 0)
    p.read.rows["e1"] = {"execution_id": "e1", "user_id": "u1", "status": "running"}
    p.projector.apply(tp, 7)
    # the executions projector decoded the completion (a stream may have sent it already)
    p.live.tap([Incoming(tp.topic, tp.partition, 7, None, 0, trail[-2])])
    read = asyncio.create_task(p.service.own(OWNER, "e1"))
    await asyncio.sleep(0)
    assert not read.done()  # the read model has not stored it yet
    p.read.rows["e1"] = {"execution_id": "e1", "user_id": "u1", "status": "completed"}
    p.projector.apply(tp, 8)
    row = await asyncio.wait_for(read, 5)
    assert row["status"] == "completed"
    # once stored, reads do not wait
    assert (await asyncio.wait_for(p.service.own(OWNER, "e1"), 0.1))["user_id"] == "u1"


async def test_execute_answers_from_the_decoded_start_and_a_read_then_waits_for_the_store() -> None:
    tp = TopicPartition("events", 0)
    decoded: list[Any] = []

    def start_decoded(cmd: Any) -> None:
        # auth and the orchestrator did their part; the executions projector decodes the
        # start (and the first dispatch) in one batch, its PostgreSQL transaction still to come
        trail = execution_trail(cmd.data.execution_id, datetime(2026, 12, 6, tzinfo=UTC))
        decoded.extend(trail[:2])
        p.live.tap(
            [Incoming(tp.topic, tp.partition, 3 + i, None, 0, m) for i, m in enumerate(trail[:2])]
        )

    p = executing_ports(start_decoded)
    # the start is decoded: the answer waits for no PostgreSQL transaction (the balance's
    # projection is GET /users/me's to wait for)
    answer, cost = await asyncio.wait_for(
        p.service.execute(OWNER, "echo_chain", {"x": 1}, {}, None), 5
    )
    eid = answer.execution_id
    assert answer.status == "running" and cost > 0
    assert answer.created_at == decoded[0].occurred_at.isoformat()
    assert eid not in p.read.rows  # answered before the read model stored it ...
    assert p.store.accepted[eid] == "u1"  # ... so any replica's read of it waits, never 404
    read = asyncio.create_task(p.service.own(OWNER, eid))
    await asyncio.sleep(0)
    assert not read.done()
    p.read.rows[eid] = {"execution_id": eid, "user_id": "u1", "status": "running"}
    p.projector.apply(tp, 5)
    assert (await asyncio.wait_for(read, 5))["status"] == "running"


async def test_execute_whose_start_is_not_decoded_in_time_answers_pending() -> None:
    p = executing_ports()
    answer, _ = await p.service.execute(OWNER, "echo_chain", {}, {}, None)
    assert answer.status == "pending"
    assert p.store.accepted[answer.execution_id] == "u1"


async def test_a_client_gone_while_execute_waits_leaves_no_wait_behind() -> None:
    p = executing_ports()
    before = len(asyncio.all_tasks())
    execute = asyncio.create_task(p.service.execute(OWNER, "echo_chain", {}, {}, None))
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before + 1  # the request, waiting for the start
    execute.cancel()
    with pytest.raises(asyncio.CancelledError):
        await execute
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == before
    assert list(p.store.accepted.values()) == ["u1"]  # the execution runs on: still marked
