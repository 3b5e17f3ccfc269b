"""``await task.progress(...)``: partial output of one node, coalesced before it is sent.

A model streams dozens of tokens a second; one message per token would flood a topic every
agent writes and every gateway reads. :class:`NodeProgress` therefore sends at most one
message per ``interval`` (0.1 s: about 10 per second per node): the text deltas given within
a window are concatenated, the latest ``tokens`` and ``status`` win. Sending runs in the
background and never fails the task: a send that fails or takes longer than ``send_timeout``
is logged and dropped (progress is live-only, the result carries the final output). The text
waiting to be sent is bounded (:data:`MAX_PENDING_BYTES`); beyond it new text is dropped and
counted. :meth:`NodeProgress.close` sends what is left, in order, before the SDK publishes
the result, so progress never follows the result from the agent's side.

Pure apart from ``asyncio``: the send function is handed in (the worker's signed producer
send, or a list in tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from spine_contracts.messages.agents import PROGRESS_STATUS_MAX_CHARS, PROGRESS_TEXT_MAX_BYTES
from spine_kafka.logging import get_logger

log = get_logger(__name__)

#: one message per node per this many seconds at most
DEFAULT_INTERVAL_S = 0.1
#: text waiting to be sent, per node; a writer faster than 10 × 8 KiB/s loses the excess
MAX_PENDING_BYTES = 64 * 1024


@dataclass(frozen=True)
class Chunk:
    """What one progress message says (the node, attempt and agent are the sender's)."""

    seq: int
    text: str | None
    tokens: int | None
    status: str | None


Send = Callable[[Chunk], Awaitable[None]]


def _head(text: str, limit: int) -> tuple[str, str]:
    """The longest prefix of ``text`` within ``limit`` UTF-8 bytes, and the rest (never
    splitting a character)."""
    if len(text.encode()) <= limit:
        return text, ""
    cut = text.encode()[:limit].decode(errors="ignore")
    return cut, text[len(cut) :]


class NodeProgress:
    """The progress of one node at one attempt: coalesces, numbers, sends in order."""

    def __init__(
        self,
        send: Send,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        send_timeout: float = 5.0,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self._send = send
        self._interval = interval
        self._send_timeout = send_timeout
        self._max_pending = max_pending_bytes
        self._text: list[str] = []
        self._text_bytes = 0
        self._tokens: int | None = None
        self._status: str | None = None
        self._dirty = False
        self._seq = 0
        self._last_sent = -1e9
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self.sent = 0
        self.failed = 0
        self.dropped_bytes = 0

    async def report(
        self, text: str | None = None, tokens: int | None = None, status: str | None = None
    ) -> None:
        """Add to what the next message says; returns at once (nothing waits for Kafka)."""
        if self._closed:
            return
        if text:
            room = self._max_pending - self._text_bytes
            size = len(text.encode())
            if size > room:
                kept, _ = _head(text, max(room, 0))
                self.dropped_bytes += size - len(kept.encode())
                text = kept
                size = len(kept.encode())
            if text:
                self._text.append(text)
                self._text_bytes += size
                self._dirty = True
        if tokens is not None:
            self._tokens = max(0, int(tokens))
            self._dirty = True
        if status is not None:
            self._status = str(status)[:PROGRESS_STATUS_MAX_CHARS]
            self._dirty = True
        if self._dirty and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush_loop(), name="agent-progress")

    async def close(self) -> None:
        """Send what is left (respecting the interval), then stop: called before the result
        goes out. Bounded by ``send_timeout`` per message; never raises."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None:
            await asyncio.gather(flusher, return_exceptions=True)
        if self._dirty:  # e.g. the flusher was cancelled meanwhile
            await self._flush_loop()

    def discard(self) -> None:
        """The task was cancelled: nothing more is sent."""
        self._closed = True
        self._dirty = False
        self._text.clear()
        if self._flusher is not None:
            self._flusher.cancel()

    def _take(self) -> Chunk:
        joined = "".join(self._text)
        text, rest = _head(joined, PROGRESS_TEXT_MAX_BYTES)
        self._text = [rest] if rest else []
        self._text_bytes = len(rest.encode())
        self._dirty = bool(rest)
        self._seq += 1
        return Chunk(self._seq, text or None, self._tokens, self._status)

    async def _flush_loop(self) -> None:
        while self._dirty:
            wait = self._last_sent + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not self._dirty:
                break
            chunk = self._take()
            self._last_sent = time.monotonic()
            try:
                async with asyncio.timeout(self._send_timeout):
                    await self._send(chunk)
                self.sent += 1
            except Exception as exc:  # live-only and best effort: the task goes on
                self.failed += 1
                log.warning("progress_send_failed", seq=chunk.seq, error=repr(exc))
