"""What the console's SSE routes make of the gateway's streams: checked ids and numbers
only; a burst of feed changes becomes few events, the last never lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from spine_console.filters import dom_id
from spine_console.live import coalesce_feed, execution_updates, progress_fragment


def change(eid: str, cursor: str = "0:1") -> dict[str, Any]:
    data = {"execution_id": eid, "status": "running"}
    return {"id": cursor, "event": "execution.started", "data": orjson.dumps(data).decode()}


async def frames(
    items: list[dict[str, Any]], gate: asyncio.Event | None = None
) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        if item.get("event") == "wait" and gate is not None:
            await gate.wait()
            continue
        yield item


async def test_feed_changes_are_checked_and_a_burst_coalesces_to_first_and_last() -> None:
    burst = [
        {"id": "0:0", "event": "feed.ready", "data": '{"cursor": "0:0"}'},
        change("<img src=x>"),  # not an id: never reaches a page
        change("a", "0:1"),
        change("b", "0:2"),
        change("c", "0:3"),
        {"event": "execution.completed", "data": "not json"},
    ]
    got = [c async for c in coalesce_feed(frames(burst), 0.05)]
    assert [c.execution_id for c in got] == ["a", "c"] or [c.execution_id for c in got] == ["c"]
    assert got[-1].cursor == "0:3"


async def test_a_change_after_a_quiet_spell_comes_at_once() -> None:
    gate = asyncio.Event()
    stream = coalesce_feed(frames([change("a"), {"event": "wait"}, change("b", "0:2")], gate), 0.01)
    first = await anext(stream)
    assert first.execution_id == "a"
    gate.set()
    second = await asyncio.wait_for(anext(stream), 5)
    assert second.execution_id == "b" and second.cursor == "0:2"
    await stream.aclose()


async def test_a_revoked_key_ends_the_feed() -> None:
    items = [{"event": "error", "data": '{"code": "KEY_REVOKED"}'}, change("late")]
    assert [c async for c in coalesce_feed(frames(items), 0.01)] == []


async def test_an_execution_stream_is_numbers_then_done_after_the_terminal_event() -> None:
    items = [
        {"id": "4", "event": "execution.node_completed", "data": "{}"},
        {"id": "5", "event": "execution.completed", "data": "{}"},
        {"id": "6", "event": "execution.command_rejected", "data": "{}"},
    ]
    got = [u async for u in execution_updates(frames(items))]
    assert got == [
        {"event": "update", "data": "4", "id": "4"},
        {"event": "update", "data": "5", "id": "5"},
        {"event": "done", "data": "done"},
    ]
    # reopened past its end: the gateway sends nothing, the page is told to stop
    assert [u async for u in execution_updates(frames([]))] == [{"event": "done", "data": "done"}]
    odd = [u async for u in execution_updates(frames([{"id": "x<", "event": "e", "data": ""}]))]
    assert odd[0] == {"event": "update", "data": "0"}


def progress(data: Any) -> dict[str, Any]:
    raw = data if isinstance(data, str) else orjson.dumps(data).decode()
    return {"event": "execution.node_progress", "data": raw}


async def test_progress_becomes_escaped_out_of_band_html_without_an_id() -> None:
    items = [
        {"id": "3", "event": "execution.node_dispatched", "data": "{}"},
        progress({"node_id": "a.b", "text": "<script>x()</script>", "tokens": 4, "status": "hm"}),
        progress({"node_id": "bad id <", "text": "dropped"}),
        progress("not json"),
        {"id": "4", "event": "execution.completed", "data": "{}"},
    ]
    got = [u async for u in execution_updates(frames(items))]
    assert [u["event"] for u in got] == ["update", "progress", "update", "done"]
    shown = got[1]
    assert "id" not in shown  # live only: a reconnect never resumes from progress
    html = shown["data"]
    assert "<script>" not in html and "&lt;script&gt;x()&lt;/script&gt;" in html
    target = f"#out-{dom_id('a.b')}"
    assert f'hx-swap-oob="beforeend:{target}"' in html
    assert f'hx-swap-oob="innerHTML:#meta-{dom_id("a.b")}"' in html and "4 tokens" in html


def test_progress_fragment_keeps_only_what_reads() -> None:
    assert progress_fragment(orjson.dumps({"text": "no node"})) == ""
    plain = progress_fragment(orjson.dumps({"node_id": "n", "text": "hi", "tokens": True}))
    assert "hi" in plain and "tokens" not in plain  # a bool is no token count
    assert dom_id("a.b") != dom_id("a:b") and dom_id("x").isalnum()
