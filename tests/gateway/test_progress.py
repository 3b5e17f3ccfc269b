"""Agents' progress at the gateway (pure, no I/O): which messages are relayed (dispatched to
this agent at this attempt, not finished, signed by that agent, within 10/s per node), how
they reach the streams, and how they are framed: on SSE with no ``id:`` line, never with
the trail's sequence numbers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from spine_contracts import (
    AgentProgress,
    ExecutionCompleted,
    NodeCompleted,
    NodeDispatched,
    NodeFailed,
    NodeSkipped,
)
from spine_gateway.executions import interleave, sse_event
from spine_gateway.live import View, event_view
from spine_gateway.progress import (
    PROGRESS_EVENT_TYPE,
    DispatchBook,
    NodeState,
    ProgressHub,
    RateLimit,
    Refusal,
    judge,
    progress_view,
)
from sse_starlette.sse import ServerSentEvent


def progress(
    agent_id: str = "a", attempt: int = 1, node_id: str = "n", seq: int = 1, eid: str = "e"
) -> AgentProgress:
    return AgentProgress.build(
        execution_id=eid,
        node_id=node_id,
        attempt=attempt,
        agent_id=agent_id,
        seq=seq,
        text="Hel",
        tokens=3,
        status="writing",
    )


def dispatched(node_id: str = "n", agent_id: str = "a", attempt: int = 1) -> NodeDispatched:
    return NodeDispatched.build(
        execution_id="e", seq=1, node_id=node_id, attempt=attempt, agent_id=agent_id, task_id="t"
    )


# --- the rule, as a table ---------------------------------------------------------------------

RUNNING = NodeState("a", 1)


@pytest.mark.parametrize(
    ("state", "agent", "attempt", "signed_by", "within_rate", "expected"),
    [
        (RUNNING, "a", 1, "a", True, None),
        (None, "a", 1, "a", True, "not_dispatched"),
        (RUNNING, "b", 1, "b", True, "other_agent"),  # b speaks of a's node, with b's key
        (RUNNING, "a", 1, "b", True, "unverified"),  # claims to be a, signed by b
        (RUNNING, "a", 2, "a", True, "other_attempt"),
        (NodeState("a", 2), "a", 1, "a", True, "other_attempt"),  # a retry: the old one
        (NodeState("a", 1, finished=True), "a", 1, "a", True, "finished"),
        (RUNNING, "a", 1, "a", False, "rate"),
    ],
)
def test_judge(
    state: NodeState | None,
    agent: str,
    attempt: int,
    signed_by: str,
    within_rate: bool,
    expected: Refusal | None,
) -> None:
    data = progress(agent, attempt).data
    assert judge(state, data, lambda who: who == signed_by, lambda: within_rate) == expected


def test_a_forged_message_never_uses_up_the_nodes_rate() -> None:
    taken: list[bool] = []

    def take() -> bool:
        taken.append(True)
        return True

    assert judge(RUNNING, progress().data, lambda _who: False, take) == "unverified"
    assert judge(None, progress().data, lambda _who: True, take) == "not_dispatched"
    assert taken == []


# --- what the gateway knows of each node -------------------------------------------------------


def test_the_book_follows_dispatches_retries_and_ends() -> None:
    book = DispatchBook()
    assert book.state("e", "n") is None
    book.observe(dispatched())
    assert book.state("e", "n") == NodeState("a", 1)
    book.observe(
        NodeFailed.build(
            execution_id="e", seq=2, node_id="n", attempt=1, error_message="x", will_retry=True
        )
    )
    assert book.state("e", "n") == NodeState("a", 1, finished=True)
    book.observe(dispatched(attempt=2))
    assert book.state("e", "n") == NodeState("a", 2)
    book.observe(NodeCompleted.build(execution_id="e", seq=4, node_id="n", attempt=1))
    assert book.state("e", "n") == NodeState("a", 2)  # the old attempt's end: not this one
    book.observe(NodeCompleted.build(execution_id="e", seq=5, node_id="n", attempt=2))
    assert book.state("e", "n") == NodeState("a", 2, finished=True)


def test_skipped_nodes_and_ended_executions_are_finished() -> None:
    book = DispatchBook()
    book.observe(dispatched("n1"))
    book.observe(dispatched("n2"))
    book.observe(NodeSkipped.build(execution_id="e", seq=3, node_id="n1", reason="x"))
    assert book.state("e", "n1") == NodeState("a", 1, finished=True)
    book.observe(ExecutionCompleted.build(execution_id="e", seq=4))
    assert book.state("e", "n2") == NodeState("a", 1, finished=True)


def test_a_seed_from_the_read_model_never_overrides_what_was_decoded() -> None:
    book = DispatchBook()
    book.observe(dispatched("n1", attempt=2))
    book.seed("e", {"n1": NodeState("a", 1), "n2": NodeState("b", 1)})
    assert book.state("e", "n1") == NodeState("a", 2)
    assert book.state("e", "n2") == NodeState("b", 1)


def test_the_book_is_bounded() -> None:
    book = DispatchBook(limit=10)
    for i in range(25):
        book.seed(f"e{i}", {"n": RUNNING})
    assert book.state("e24", "n") == RUNNING
    assert book.state("e0", "n") is None


def test_ten_a_second_per_node() -> None:
    now = [0.0]
    rate = RateLimit(clock=lambda: now[0])
    assert sum(rate.take("e", "n", 1) for _ in range(25)) == 10  # a burst: 10 pass
    assert rate.take("e", "m", 1)  # another node has its own budget
    now[0] += 0.5
    assert sum(rate.take("e", "n", 1) for _ in range(25)) == 5
    now[0] += 10
    assert sum(rate.take("e", "n", 1) for _ in range(25)) == 10  # never more than a burst


# --- the hub: to whom it goes ------------------------------------------------------------------


def test_relayed_to_each_stream_of_the_execution_and_drops_counted() -> None:
    book = DispatchBook()
    book.observe(dispatched())
    drops: list[str] = []
    hub = ProgressHub(book, drops.append)
    ok = lambda who: who == "a"  # noqa: E731 - the signature check, as a table
    assert hub.offer(progress(), ok) is None  # nobody watches: nothing checked or counted
    with hub.subscribe("e") as q1, hub.subscribe("e") as q2, hub.subscribe("other") as q3:
        assert hub.offer(progress(), ok) is None
        assert hub.offer(progress("b"), lambda who: who == "b") == "other_agent"
        assert hub.offer(progress(), lambda _who: False) == "unverified"
        view = q1.get_nowait()
        assert view == q2.get_nowait()
        assert q3.empty() and q1.empty()
        assert view == {
            "type": PROGRESS_EVENT_TYPE,
            "data": {
                "node_id": "n",
                "agent_id": "a",
                "attempt": 1,
                "seq": 1,
                "text": "Hel",
                "tokens": 3,
                "status": "writing",
            },
        }
    assert drops == ["other_agent", "unverified"]
    assert not hub.watched("e")


def test_a_slow_client_loses_progress_not_the_relay() -> None:
    book = DispatchBook()
    book.observe(dispatched())
    drops: list[str] = []
    hub = ProgressHub(book, drops.append)
    hub.rate = RateLimit(rate=10_000)
    with hub.subscribe("e") as queue:
        for i in range(300):
            hub.offer(progress(seq=i + 1), lambda _who: True)
        assert queue.qsize() == 256
    assert drops == ["slow_client"] * 44


def test_progress_after_the_node_finished_is_dropped() -> None:
    book = DispatchBook()
    book.observe(dispatched())
    hub = ProgressHub(book)
    with hub.subscribe("e") as queue:
        book.observe(NodeCompleted.build(execution_id="e", seq=2, node_id="n", attempt=1))
        assert hub.offer(progress(), lambda _who: True) == "finished"
        assert queue.empty()


# --- on the stream -----------------------------------------------------------------------------


def _progress_view(node_id: str = "n", attempt: int = 1) -> View:
    return {
        "type": PROGRESS_EVENT_TYPE,
        "data": {"node_id": node_id, "attempt": attempt, "agent_id": "a", "seq": 1},
    }


def test_sse_progress_has_no_id_line_and_trail_events_keep_theirs() -> None:
    data = progress_view(progress().data)
    frame = sse_event({"type": PROGRESS_EVENT_TYPE, "data": data})
    assert "id" not in frame
    wire = ServerSentEvent(**frame).encode().decode()
    assert not any(line.startswith("id:") for line in wire.splitlines())
    assert "event: execution.node_progress" in wire
    assert orjson.loads(frame["data"]) == data
    trail = sse_event(event_view(7, "execution.node_completed", {"node_id": "n"}, None))
    assert trail["id"] == "7"
    assert "id: 7" in ServerSentEvent(**trail).encode().decode()


async def _trail(views: list[View], gate: asyncio.Event) -> AsyncIterator[View]:
    yield views[0]
    await gate.wait()
    for view in views[1:]:
        yield view


async def test_progress_comes_between_trail_events_in_their_order() -> None:
    views = [
        event_view(1, "execution.node_dispatched", {"node_id": "n", "attempt": 1}, None),
        event_view(2, "execution.node_completed", {"node_id": "n", "attempt": 1}, None),
        event_view(3, "execution.completed", {}, None),
    ]
    gate = asyncio.Event()
    extra: asyncio.Queue[View] = asyncio.Queue()
    out: list[View] = []
    merged = interleave(_trail(views, gate), extra)
    out.append(await anext(merged))
    extra.put_nowait(_progress_view())
    out.append(await anext(merged))
    gate.set()
    async for view in merged:
        out.append(view)
        if view.get("seq") == 2:  # queued before its end reached the stream: left out
            extra.put_nowait(_progress_view())
    assert [v.get("seq") for v in out] == [1, None, 2, 3]
    assert out[1]["type"] == PROGRESS_EVENT_TYPE


async def test_a_retry_streams_again_after_the_failed_attempt() -> None:
    views = [
        event_view(1, "execution.node_failed", {"node_id": "n", "attempt": 1}, None),
        event_view(2, "execution.node_dispatched", {"node_id": "n", "attempt": 2}, None),
    ]
    gate = asyncio.Event()
    extra: asyncio.Queue[View] = asyncio.Queue()
    merged = interleave(_trail(views, gate), extra)
    first = await anext(merged)
    assert first["seq"] == 1
    extra.put_nowait(_progress_view(attempt=1))  # stale: dropped
    extra.put_nowait(_progress_view(attempt=2))
    shown = await anext(merged)
    assert shown["data"]["attempt"] == 2
    gate.set()
    rest = [v async for v in merged]
    assert [v.get("seq") for v in rest] == [2]
