"""The live trail that feeds streams before the read model has stored an event (pure, no I/O)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
from aiokafka import TopicPartition
from crash.helpers import execution_trail
from spine_contracts import Message
from spine_gateway.live import (
    LiveTrail,
    View,
    await_started,
    event_view,
    follow_trail,
    live_view,
)
from spine_servicekit.projector import Incoming

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
TP = TopicPartition("spine.executions.events", 0)


def incoming(message: Message, offset: int) -> Incoming:
    return Incoming(TP.topic, TP.partition, offset, None, 0, message)


def stored_view(m: Message) -> View:
    """What the read model gives back: the data as stored JSON (``model_dump_json``)."""
    d = m.data
    return event_view(d.seq, m.type, orjson.loads(d.model_dump_json()), m.occurred_at)  # type: ignore[attr-defined]


def trail_until_terminal(eid: str) -> list[Message]:
    trail = execution_trail(eid, T0)
    end = next(i for i, m in enumerate(trail) if m.type == "execution.completed")
    return trail[: end + 1]


class Store:
    """The read model's trail: what a test says is stored so far."""

    def __init__(self, messages: Sequence[Message]) -> None:
        self.messages = list(messages)
        self.reads: list[int] = []
        self.read = asyncio.Event()

    async def after(self, seq: int) -> list[View]:
        self.reads.append(seq)
        self.read.set()
        return [stored_view(m) for m in self.messages if m.data.seq > seq]  # type: ignore[attr-defined]


async def collect(
    queue: asyncio.Queue[Message], store: Store, catch_up, after: int = -1
) -> list[View]:  # type: ignore[no-untyped-def]
    out: list[View] = []
    async with asyncio.timeout(5):
        async for view in follow_trail(queue, store.after, catch_up, after=after, idle_s=0.05):
            out.append(view)
    return out


class CatchUps:
    """``catch_up`` that counts its calls (the store is already complete)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


def test_a_live_event_looks_like_the_stored_one() -> None:
    for m in execution_trail("e1", T0):
        assert orjson.loads(orjson.dumps(live_view(m))) == orjson.loads(
            orjson.dumps(stored_view(m))
        )


def test_tap_feeds_only_the_executions_subscribers_while_subscribed() -> None:
    live = LiveTrail()
    a, b = execution_trail("a", T0), execution_trail("b", T0)
    with live.subscribe("a") as queue:
        assert live.subscribers() == 1
        live.tap([incoming(a[0], 0), incoming(b[0], 1), incoming(a[1], 2)])
        assert [queue.get_nowait() for _ in range(queue.qsize())] == [a[0], a[1]]
    assert live.subscribers() == 0
    live.tap([incoming(a[2], 3)])  # nobody listening: nothing kept but the position


def test_pending_names_the_latest_decoded_offset_until_it_is_applied() -> None:
    live = LiveTrail()
    trail = execution_trail("e", T0)
    assert live.pending("e", {}) is None  # never seen: nothing to wait for
    live.tap([incoming(trail[0], 10), incoming(trail[1], 11)])
    assert live.pending("e", {TP: 11}) == (TP, 12)
    assert live.pending("e", {TP: 12}) is None
    assert live.pending("other", {}) is None


def test_seen_positions_are_bounded_least_recent_first() -> None:
    live = LiveTrail(limit=4)
    msgs = {eid: execution_trail(eid, T0)[0] for eid in "abcd"}
    for i, eid in enumerate("abcd"):
        live.tap([incoming(msgs[eid], i)])
    live.tap([incoming(msgs["a"], 4)])  # a is now the most recent
    live.tap([incoming(execution_trail("e", T0)[0], 5)])  # full: the least recent half goes
    assert live.pending("b", {}) is None and live.pending("c", {}) is None
    assert live.pending("a", {}) == (TP, 5) and live.pending("e", {}) == (TP, 6)


async def test_stored_then_live_in_seq_order_until_terminal() -> None:
    trail = trail_until_terminal("e")
    store = Store(trail[:3])
    queue: asyncio.Queue[Message] = asyncio.Queue()
    for m in trail[2:]:  # the third is both stored and live: sent once
        queue.put_nowait(m)
    queue.put_nowait(trail[1])  # a repeat of an old one
    catch_up = CatchUps()
    views = await collect(queue, store, catch_up)
    assert [v["seq"] for v in views] == [m.data.seq for m in trail]  # type: ignore[attr-defined]
    assert views[-1]["type"] == "execution.completed"
    assert store.reads == [-1]  # the store was read once: the rest came live
    assert catch_up.calls == 1  # only the one before the first read


async def test_a_gap_in_the_live_events_waits_and_reads_the_store_again() -> None:
    trail = trail_until_terminal("e")
    store = Store(trail[:1])
    queue: asyncio.Queue[Message] = asyncio.Queue()
    caught_up = []

    async def catch_up() -> None:  # the read model stores what was decoded before subscribing
        caught_up.append(True)
        if len(caught_up) > 1:  # the first is before the first read
            store.messages = trail[:4]

    for m in trail[3:]:  # 2 and 3 were decoded before the stream subscribed
        queue.put_nowait(m)
    views = await collect(queue, store, catch_up)
    assert [v["seq"] for v in views] == [m.data.seq for m in trail]  # type: ignore[attr-defined]
    assert caught_up == [True, True]
    assert store.reads == [-1, 1]


async def test_quiet_stream_reads_the_store_again_and_resumes_after_last_event_id() -> None:
    trail = trail_until_terminal("e")
    store = Store(trail[:2])
    queue: asyncio.Queue[Message] = asyncio.Queue()

    async def collecting() -> list[View]:
        return await collect(queue, store, CatchUps(), after=1)

    task = asyncio.create_task(collecting())
    await store.read.wait()  # the first read happened; nothing live arrives
    store.messages = trail  # stored without reaching this tap (another path)
    views = await task
    assert [v["seq"] for v in views] == [m.data.seq for m in trail[1:]]  # type: ignore[attr-defined]
    assert len(store.reads) >= 2


async def test_terminal_in_the_store_ends_without_waiting_for_live_events() -> None:
    trail = trail_until_terminal("e")
    views = await collect(asyncio.Queue(), Store(trail), CatchUps())
    assert views[-1]["type"] == "execution.completed"
    assert len(views) == len(trail)


async def test_the_terminal_event_decoded_just_before_subscribing_is_not_missed() -> None:
    """Decoded before the stream subscribed (so never on its queue) and not yet stored when
    the stream opened: the first catch-up waits for the store, no idle wait needed."""
    trail = trail_until_terminal("e")
    store = Store(trail[:-1])

    async def catch_up() -> None:
        store.messages = trail  # the read model commits what it had decoded

    views: list[View] = []
    async with asyncio.timeout(1):  # far below idle_s: only the catch-up can deliver it
        async for view in follow_trail(asyncio.Queue(), store.after, catch_up, after=-1, idle_s=60):
            views.append(view)
    assert views[-1]["type"] == "execution.completed"


async def test_the_execute_answer_is_the_start_or_the_end_decoded_with_it() -> None:
    trail = trail_until_terminal("e1")
    live = LiveTrail()
    with live.subscribe("e1") as queue:  # the start and its first dispatch in one batch
        live.tap([incoming(m, i) for i, m in enumerate(trail[:2])])
        assert await asyncio.wait_for(await_started(queue), 1) == ("running", trail[0].occurred_at)
    with live.subscribe("e1") as queue:  # the start and the end in one batch
        live.tap([incoming(m, i) for i, m in enumerate(trail)])
        status, _ = await asyncio.wait_for(await_started(queue), 1)
        assert status == "completed"
    with live.subscribe("e1") as queue:  # no start yet: it keeps waiting
        live.tap([incoming(trail[1], 1)])
        waiting = asyncio.ensure_future(await_started(queue))
        await asyncio.sleep(0)
        assert not waiting.done()
        live.tap([incoming(trail[0], 0)])
        assert (await asyncio.wait_for(waiting, 1))[0] == "running"
