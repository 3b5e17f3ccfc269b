"""asyncio helpers every process on the bus uses: the event loop, and waiting on events."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T], event_loop: str = "uvloop") -> T:
    """``asyncio.run`` on uvloop where it is installed and chosen (``SPINE_EVENT_LOOP``):
    libuv's loop spends less CPU per event than asyncio's own (selector, handles and
    transports in Python)."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # not on this platform: the standard loop does the same work
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
    return asyncio.run(main)


async def wait_any(*events: asyncio.Event, within: float) -> None:
    """Return when one of ``events`` is set or ``within`` seconds have passed."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
