"""The gateway's SSE streams turned into what the console's pages listen to.

Only numbers and ids the console checked leave here: a feed change becomes its execution id,
an execution's event its sequence number. The pages re-fetch fragments on them; the
gateway's text never reaches the browser through a stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from .gateway import GatewayError
from .pages import templates
from .queries import FEED_CURSOR_RE, ID_RE

PROGRESS_EVENT = "execution.node_progress"
TERMINAL_EVENTS = frozenset({"execution.completed", "execution.failed", "execution.cancelled"})
#: the gateway ends a stream with this when the key is revoked or expires
ERROR_EVENT = "error"


@dataclass(frozen=True)
class Change:
    execution_id: str
    #: the feed's cursor after the change (the browser resumes from it), or ""
    cursor: str


def _change(frame: dict[str, Any]) -> Change | None:
    """A status change of the feed, or ``None`` for anything else (``feed.ready``)."""
    if not str(frame.get("event") or "").startswith("execution."):
        return None
    try:
        data = orjson.loads(frame.get("data") or "{}")
    except orjson.JSONDecodeError:
        return None
    eid = data.get("execution_id") if isinstance(data, dict) else None
    if not isinstance(eid, str) or not ID_RE.match(eid):
        return None
    cursor = str(frame.get("id") or "")
    return Change(eid, cursor if FEED_CURSOR_RE.match(cursor) else "")


async def coalesce_feed(
    frames: AsyncIterator[dict[str, Any]], interval_s: float
) -> AsyncGenerator[Change, None]:
    """The feed's changes, at most one per ``interval_s`` — the first at once, the last
    never dropped (a page refreshing on each of a burst would only repeat itself). Ends
    when the gateway's feed ends."""
    latest: list[Change] = []
    changed = asyncio.Event()
    ended = asyncio.Event()

    async def read() -> None:
        try:
            async for frame in frames:
                if frame.get("event") == ERROR_EVENT:
                    return
                change = _change(frame)
                if change is not None:
                    latest[:] = [change]
                    changed.set()
        except (GatewayError, httpx.TransportError):
            return  # the feed broke: the stream ends and the browser reconnects
        finally:
            ended.set()

    reader = asyncio.create_task(read())
    try:
        while True:
            waiters = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(ended.wait())]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if changed.is_set():
                changed.clear()
                yield latest[0]
                await asyncio.sleep(interval_s)  # what comes meanwhile is one more change
                continue
            if ended.is_set():
                break
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def execution_updates(frames: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, str]]:
    """One ``update`` per event of an execution's stream (data and id: its number), then
    ``done`` — after the terminal event, or when the stream ends without one (a finished
    execution reopened past its end, a revoked key): either way nothing more will come.
    A broken connection ends without ``done``, so the browser reconnects (``id`` resumes)."""
    try:
        async for frame in frames:
            event = str(frame.get("event") or "")
            if event == ERROR_EVENT:
                break
            if event == PROGRESS_EVENT:
                fragment = progress_fragment(frame.get("data"))
                if fragment:  # live only: no id, so a reconnect never asks for it again
                    yield {"event": "progress", "data": fragment}
                continue
            seq = str(frame.get("id") or "")
            update = {"event": "update", "data": seq if seq.isdigit() else "0"}
            if seq.isdigit():
                update["id"] = seq
            yield update
            if event in TERMINAL_EVENTS:
                break
    except (GatewayError, httpx.TransportError):
        return  # the stream broke, not the execution: the browser reconnects and resumes
    yield {"event": "done", "data": "done"}


def progress_fragment(raw: Any) -> str:
    """An agent's partial output as out-of-band HTML for the node's live output box:
    its text appended, its status and token count replaced. Rendered by the autoescaping
    templates — the text is untrusted — and ``""`` for anything that does not read."""
    try:
        data = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return ""
    node_id = data.get("node_id") if isinstance(data, dict) else None
    if not isinstance(node_id, str) or not ID_RE.match(node_id):
        return ""
    text, status, tokens = data.get("text"), data.get("status"), data.get("tokens")
    context = {
        "node_id": node_id,
        "text": text if isinstance(text, str) else "",
        "status": status if isinstance(status, str) else "",
        "tokens": tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
    }
    return templates.env.get_template("executions/_progress.html").render(context).strip()
