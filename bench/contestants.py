"""The four contestants behind one interface: measure a phase, then audit what it did.

Each ``latency``/``throughput`` returns the figures and a :data:`Check` that audits every
execution the phase submitted (warm-up included). The runner awaits the check after the
phase, so the audit's work is in neither its measured window nor its CPU figures: observers
keep bytes while the clock runs and decode afterwards.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from spine_kafka.clients import KafkaConfig, make_producer

from . import celery_peer
from .checks import (
    Audit,
    Tally,
    audit,
    balance_failure,
    expected_balance,
    floor_output,
    spine_echo_output,
)
from .common import SHAPES, Latency, Throughput, Tick, no_tick
from .floor import Floor
from .peer import CeleryPeer
from .spine import INPUT, TERMINAL, SpineClient, SpineObserver

#: audits a phase once it is over (outside its measured window and its CPU figures)
Check = Callable[[], Awaitable[Audit]]


def _ready(make: Callable[[], Audit]) -> Check:
    async def check() -> Audit:
        return make()

    return check


class Contestant(Protocol):
    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def latency(
        self, shape: str, runs: int, tick: Tick, deadline: float | None
    ) -> tuple[Latency, Check]: ...

    async def throughput(
        self, shape: str, n: int, tick: Tick, deadline: float | None
    ) -> tuple[Throughput, Check]: ...


class FloorContestant:
    """The frozen floor, on fresh topics for each of its turns."""

    name = "floor"

    def __init__(self, kafka: KafkaConfig, partitions: int) -> None:
        self.kafka = kafka
        self.partitions = partitions
        self.floor: Floor | None = None

    async def warm_up(self, seconds: float) -> Audit:
        """Unmeasured floor executions for ``seconds`` before anything is measured: a broker
        started moments ago by ``make up`` runs its first transactions before the JVM has
        compiled them, and whoever is measured first would pay for it."""
        await self.open()
        try:
            assert self.floor is not None
            await self.floor.latency("chain", 1, warmup_s=seconds)
            return self._audit("chain")
        finally:
            await self.close()

    async def open(self) -> None:
        self.floor = Floor(
            self.kafka.bootstrap_servers,
            self.partitions,
            security=self.kafka.security.client_kwargs(),
        )
        await self.floor.__aenter__()

    async def close(self) -> None:
        if self.floor is not None:
            await self.floor.__aexit__(None, None, None)
            self.floor = None

    def _audit(self, shape: str, pending: set[str] = frozenset()) -> Audit:  # type: ignore[assignment]
        assert self.floor is not None
        want = floor_output(SHAPES[shape], INPUT)
        return audit(self.floor.tally(), lambda _e: want, pending=pending)

    async def latency(
        self, shape: str, runs: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> tuple[Latency, Check]:
        assert self.floor is not None
        lat = await self.floor.latency(shape, runs, tick, deadline)
        return lat, _ready(lambda: self._audit(shape))

    async def throughput(
        self, shape: str, n: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> tuple[Throughput, Check]:
        assert self.floor is not None
        submitted = list(self.floor.submitted)
        tp = await self.floor.throughput(shape, n, tick, deadline)
        # a cut phase's tail dies with the floor's topics: pending, not lost
        pending = {e for e in self.floor.submitted[len(submitted) :]} - set(self.floor.completed)
        return tp, _ready(lambda: self._audit(shape, pending))


class CeleryContestant:
    """One Celery configuration (``fast`` or ``matched``); its worker runs for the whole run."""

    def __init__(self, peer: CeleryPeer) -> None:
        self.peer = peer
        self.name = f"celery-{peer.config}"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def latency(
        self, shape: str, runs: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> tuple[Latency, Check]:
        lat, tally = await asyncio.to_thread(
            self.peer.latency, shape=shape, runs=runs, tick=tick, deadline=deadline
        )
        return lat, _ready(lambda: self._audit(shape, tally))

    async def throughput(
        self, shape: str, n: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> tuple[Throughput, Check]:
        tp, tally = await asyncio.to_thread(
            self.peer.throughput, shape=shape, n=n, tick=tick, deadline=deadline
        )
        # the unfinished tail is left to the worker (restarted if it must be): not lost
        pending = tally.accepted - tally.status.keys()
        return tp, _ready(lambda: self._audit(shape, tally, pending))

    def _audit(self, shape: str, tally: Tally, pending: set[str] = frozenset()) -> Audit:  # type: ignore[assignment]
        want = celery_peer.expected_output(shape, INPUT)
        return audit(tally, lambda _e: want, pending=pending)


class SpineContestant:
    """AI Spine through its HTTP API, observed on the bus by one :class:`SpineObserver`.

    ``inject`` (tests only) breaks the run on purpose after the first phase, on the real
    system, to prove the checks catch it: ``double`` produces a copy of one task and of one
    terminal event of an accepted execution; ``balance`` adds a credit to the bench user.
    """

    name = "spine"

    def __init__(
        self,
        client: SpineClient,
        kafka: KafkaConfig,
        prefix: str,
        flows: dict[str, dict[str, Any]],
        *,
        drain_s: float,
        inject: frozenset[str] = frozenset(),
    ) -> None:
        self.client = client
        self.kafka = kafka
        self.prefix = prefix
        self.drain_s = drain_s
        self.expected = {shape: spine_echo_output(f, INPUT) for shape, f in flows.items()}
        self.cost = {shape: int(f.get("cost", 1)) for shape, f in flows.items()}
        self.shape_of: dict[str, str] = {}
        self.observer: SpineObserver | None = None
        self.inject = set(inject)
        self.tally = Tally()  # every phase's, for the balance
        self.pending: set[str] = set()  # accepted, not terminal when their phase ended
        self.drains: list[Any] = []

    async def open(self) -> None:
        if self.observer is None:  # one observer for the whole run: a late duplicate is seen
            self.observer = SpineObserver(self.kafka, self.prefix)
            await self.observer.start()

    async def close(self) -> None:
        return None

    async def shutdown(self) -> None:
        if self.observer is not None:
            await self.observer.stop()
            self.observer = None

    async def _audit(self, shape: str, ids: set[str], pending: set[str]) -> Audit:
        assert self.observer is not None
        for e in ids:
            self.shape_of[e] = shape
        await self.observer.wait_terminal(ids - pending, time.monotonic() + 30)
        await self._injections(ids)
        await self.observer.caught_up()
        tally = self.observer.tally(ids, keep=pending)
        self.tally.merge(tally)
        self.pending |= pending
        want = self.expected[shape]
        return audit(tally, lambda _e: want, pending=pending)

    async def _injections(self, ids: set[str]) -> None:
        if not self.inject or not ids:
            return
        assert self.observer is not None
        if "balance" in self.inject:
            self.inject.discard("balance")
            await self.client.add_credits(1)
        if "double" in self.inject:
            self.inject.discard("double")
            producer = make_producer(self.kafka)
            await producer.start()
            try:
                execution_id = sorted(ids)[0]
                kinds_done: set[str] = set()
                for kind, value in list(self.observer.records.get(execution_id, ())):
                    wanted = "task" if kind == "agent.message" else kind
                    if kind not in ("agent.message", *TERMINAL) or wanted in kinds_done:
                        continue
                    kinds_done.add(wanted)
                    topic = self.observer.topics[1 if kind == "agent.message" else 0]
                    await producer.send_and_wait(
                        topic,
                        value=value,
                        key=execution_id.encode(),
                        headers=[("message-type", kind.encode())],
                    )
            finally:
                await producer.stop()

    async def latency(
        self, shape: str, runs: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> tuple[Latency, Check]:
        lat = await self.client.latency(shape, runs, tick, deadline)
        return lat, lambda: self._audit(shape, set(lat.executions), set())

    async def throughput(
        self, shape: str, n: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> tuple[Throughput, Check]:
        assert self.observer is not None
        measure_until = None if deadline is None else deadline - self.drain_s
        tp, drain = await self.client.throughput(shape, n, self.observer, tick, measure_until)
        if tp.unfinished:
            await drain.finish(deadline)  # the tail ends before anything else is measured
        else:
            await drain.finish(time.monotonic())
        pending = set(tp.executions) - self.observer.first_terminal.keys()
        tp.lost = None if pending else 0
        return tp, lambda: self._audit(shape, set(tp.executions), pending)

    async def final_checks(
        self, start_balance: int, wait_s: float = 60.0
    ) -> tuple[Audit, str | None]:
        """The executions left running by cut phases (lost if still not terminal after
        ``wait_s``), then the bench user's balance against ``docs/credits.md``."""
        assert self.observer is not None
        late = Audit()
        if self.pending:
            await self.observer.wait_terminal(self.pending, time.monotonic() + wait_s)
            await self.observer.caught_up()
            tally = self.observer.tally(self.pending)
            for e in list(self.tally.status):
                if e in self.pending:
                    del self.tally.status[e]
            self.tally.merge(tally)
            by_shape: dict[str, set[str]] = {}
            for e in self.pending:
                by_shape.setdefault(self.shape_of.get(e, "chain"), set()).add(e)
            for shape, ids in by_shape.items():
                part = Tally(
                    accepted=ids,
                    terminal=tally.terminal,
                    status=tally.status,
                    outputs=tally.outputs,
                    dispatches=tally.dispatches,
                    runs=tally.runs,
                )
                want = self.expected[shape]
                merge_audit(late, audit(part, lambda _e, w=want: w))
        final = await self.client.balance_when(
            lambda b: b == _expected(start_balance, self), timeout=30.0
        )
        failure = balance_failure(
            start_balance, final, self.tally, lambda e: self.cost[self.shape_of.get(e, "chain")]
        )
        return late, failure


def _expected(start: int, c: SpineContestant) -> int:
    return expected_balance(start, c.tally, lambda e: c.cost[c.shape_of.get(e, "chain")])


def merge_audit(into: Audit, other: Audit) -> None:
    """Add ``other``'s counts and examples to ``into``."""
    into.checked += other.checked
    for kind, n in other.failures.items():
        into.failures[kind] = into.failures.get(kind, 0) + n
        shown = into.examples.setdefault(kind, [])
        shown.extend(other.examples.get(kind, [])[: max(0, 5 - len(shown))])
    into.reruns += other.reruns
    into.rerun_tasks += other.rerun_tasks
