"""The WebSockets: one execution's (``GET /api/v1/executions/{id}/ws``) and the live feed's
(``GET /api/v1/executions/ws``: the items of ``/executions/stream`` as frames
``{"type", "cursor", ...}``, ``?after=<cursor>`` resumes, closed 1013 when the gateway stops).

It sends what the SSE stream sends (:meth:`ExecutionsService.trail`, the one generator
behind both): one JSON text frame per event, ``{"seq", "type", "data", "occurred_at"}`` —
the SSE event's ``data`` — in ``seq`` order; ``?after=<seq>`` resumes after that event;
after the terminal event the server closes with 1000. Agents' live progress comes between
them as ``{"type": "execution.node_progress", "data": {...}}`` frames without the trail's
``seq`` (never replayed: a resume sends only trail events it missed).

FastAPI's HTTP bearer dependency does not run on WebSocket routes, so the handshake is
here, on the same parts as HTTP: :meth:`Identity.authenticate` for the key (the
``Authorization: Bearer`` header, or — browsers cannot set headers on a WebSocket — a
first message ``{"type": "auth", "api_key": "..."}`` within :data:`AUTH_TIMEOUT_S`),
:func:`policy.check` for the ``executions:read`` scope, the user's rate limit, and
:meth:`ExecutionsService.own` for the execution (another tenant's is not found).

A refusal is a close code after the handshake is accepted (a refused handshake reaches a
browser as a bare 403 with no reason): ``4000 +`` the HTTP status the same request would
get, the reason ``"<ERROR_CODE>: <message>"``. The table is
``spine_contracts.sockets.CLOSE_MEANINGS`` (and the AsyncAPI document): 1000 after the
terminal event; 1013 a dependency is down (1011 any other server error); 4401 no valid key,
no auth message in time, or a key revoked or expired while open; 4403 no
``executions:read``; 4404 not found or another tenant's; 4422 a bad ``after``; 4429 the
rate limit, or too many sockets for the key on this replica (``SPINE_GATEWAY_WS_MAX_PER_KEY``;
per replica: a slot is released the moment its socket closes, and there is no shared count
to leak when a replica dies).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import orjson
from spine_contracts.sockets import AUTH_TIMEOUT_S, CloseCode
from starlette.websockets import WebSocket, WebSocketDisconnect

from .deps import Gateway
from .errors import GatewayError, Unavailable
from .executions import while_valid
from .feed import MAX_CURSOR_CHARS, CursorError, FeedEvent, parse_cursor
from .identity import Principal
from .keys import bearer_token
from .live import View
from .models import ID_PATTERN
from .policy import Action, check

#: the largest auth message read (a key is 46 characters)
MAX_AUTH_MESSAGE: Final = 4096
#: the largest sequence number (int4 in the read model), as for ``Last-Event-ID``
MAX_SEQ: Final = 2**31 - 1

_ID = re.compile(ID_PATTERN)
_MAX_REASON = 123  # bytes: what fits in a close frame


class Refused(Exception):
    """Close the socket with ``code`` and ``reason``."""

    def __init__(self, code: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason(error_code, message)


def reason(error_code: str, message: str) -> str:
    """``"<ERROR_CODE>: <message>"``, cut to what a close frame holds."""
    text = f"{error_code}: {message}".encode()
    return text[:_MAX_REASON].decode(errors="ignore")


def refusal(error: GatewayError) -> Refused:
    """The close a gateway error becomes: 4000 + its HTTP status; 1013 for a 503 (try
    again later), 1011 for any other 5xx."""
    if error.status < 500:
        code = 4000 + error.status
    elif isinstance(error, Unavailable):
        code = CloseCode.TRY_AGAIN_LATER
    else:
        code = CloseCode.INTERNAL_ERROR
    return Refused(code, error.code, error.message)


def parse_after(raw: str | None) -> int | None:
    """``?after=`` as ``Last-Event-ID`` is read: an integer, below 0 is the whole trail."""
    if raw is None or raw == "":
        return None
    if not re.fullmatch(r"-?[0-9]{1,12}", raw):
        raise Refused(
            CloseCode.INVALID, "VALIDATION_ERROR", "after must be an integer sequence number"
        )
    after = int(raw)
    if after > MAX_SEQ:
        raise Refused(
            CloseCode.INVALID, "VALIDATION_ERROR", f"after {after} is beyond any sequence number"
        )
    return max(after, -1)


def auth_message_key(text: str) -> str | None:
    """The key of an auth message ``{"type": "auth", "api_key": "..."}`` (``None``: it
    names none, as a request without a header); anything else is refused."""
    try:
        message: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict) or message.get("type") != "auth":
        raise Refused(
            CloseCode.UNAUTHENTICATED,
            "AUTH_REQUIRED",
            'send Authorization: Bearer <key>, or first {"type": "auth", "api_key": "<key>"}',
        )
    key = message.get("api_key")
    if key is not None and not isinstance(key, str):
        raise Refused(CloseCode.UNAUTHENTICATED, "INVALID_API_KEY", "api_key must be a string")
    return (key.strip() or None) if key is not None else None


class KeySockets:
    """The sockets open per key on this replica, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    @contextmanager
    def hold(self, key_id: str) -> Iterator[None]:
        count = self._open.get(key_id, 0)
        if count >= self.limit:
            raise Refused(
                CloseCode.TOO_MANY,
                "TOO_MANY_SOCKETS",
                f"at most {self.limit} WebSockets are open per key; close one first",
            )
        self._open[key_id] = count + 1
        try:
            yield
        finally:
            left = self._open[key_id] - 1
            if left:
                self._open[key_id] = left
            else:
                del self._open[key_id]

    def open(self, key_id: str) -> int:
        return self._open.get(key_id, 0)


async def follow_execution(
    ws: WebSocket, gateway: Gateway, sockets: KeySockets, execution_id: str
) -> None:
    """Serve one execution's socket from the handshake to its close."""
    await _serve(ws, lambda: _follow(ws, gateway, sockets, execution_id))


async def _serve(ws: WebSocket, follow: Callable[[], Awaitable[tuple[int, str]]]) -> None:
    """Accept, run ``follow`` to the close it names (or a refusal's), and close."""
    await ws.accept()
    try:
        code, why = await follow()
    except WebSocketDisconnect:
        return  # the client went away: nobody to tell
    except Refused as refused:
        code, why = refused.code, refused.reason
    except GatewayError as error:
        closing = refusal(error)
        code, why = closing.code, closing.reason
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.close(code, why)  # the client may have gone meanwhile


async def _follow(
    ws: WebSocket, gateway: Gateway, sockets: KeySockets, execution_id: str
) -> tuple[int, str]:
    after = parse_after(ws.query_params.get("after"))
    principal = await authenticate(ws, gateway)
    if not _ID.fullmatch(execution_id):  # no execution has such an id
        raise Refused(CloseCode.NOT_FOUND, "EXECUTION_NOT_FOUND", "execution not found")
    with sockets.hold(principal.key_id):
        views = await gateway.executions.trail(
            principal,
            execution_id,
            after,
            gateway.settings.sse_keepalive_s,
            lambda: gateway.identity.still_valid(principal),
        )
        return await pump(ws, views)


async def follow_feed(ws: WebSocket, gateway: Gateway, sockets: KeySockets) -> None:
    """Serve a live feed's socket (``GET /executions/ws``) from the handshake to its close."""
    await _serve(ws, lambda: _follow_feed(ws, gateway, sockets))


async def _follow_feed(ws: WebSocket, gateway: Gateway, sockets: KeySockets) -> tuple[int, str]:
    raw = ws.query_params.get("after") or None
    cursor = None
    if raw is not None:
        try:
            if len(raw) > MAX_CURSOR_CHARS:
                raise CursorError("the cursor is too long")
            cursor = parse_cursor(raw)
        except CursorError as exc:
            raise Refused(CloseCode.INVALID, "VALIDATION_ERROR", str(exc)) from None
    principal = await authenticate(ws, gateway)
    with sockets.hold(principal.key_id):
        events = gateway.feed.follow(principal.owner, cursor)
        frames = _feed_frames(events, lambda: gateway.identity.still_valid(principal))
        return await pump(ws, frames, ended=_FEED_STOPPED)


async def _feed_frames(
    events: AsyncIterator[FeedEvent], still_valid: Callable[[], Awaitable[bool]]
) -> AsyncGenerator[View | None, None]:
    """The feed's items as frames (``{"type", "cursor", ...}``); ``None`` once the key went."""
    async for event in while_valid(events, still_valid):
        yield None if event is None else {**event.data, "type": event.type}


async def authenticate(
    ws: WebSocket, gateway: Gateway, action: Action = Action.EXECUTION_READ
) -> Principal:
    """The caller, as ``deps.Allowed(action)`` finds it for HTTP: the same key resolution,
    policy check and rate limit."""
    header = ws.headers.get("authorization")
    key = bearer_token(header) if header is not None else await _auth_message(ws)
    principal = await gateway.identity.authenticate(key)
    check(principal.caller, action)
    if principal.user is not None:
        await gateway.identity.rate(principal.user)
    return principal


async def _auth_message(ws: WebSocket) -> str | None:
    try:
        async with asyncio.timeout(AUTH_TIMEOUT_S):
            message = await ws.receive()
    except TimeoutError:
        raise Refused(
            CloseCode.UNAUTHENTICATED,
            "AUTH_TIMEOUT",
            f'no {{"type": "auth"}} message within {AUTH_TIMEOUT_S:g} s',
        ) from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None and message.get("bytes") is not None:
        text = message["bytes"].decode(errors="replace")
    if text is None or len(text) > MAX_AUTH_MESSAGE:
        raise Refused(CloseCode.UNAUTHENTICATED, "AUTH_REQUIRED", "the auth message is not one")
    return auth_message_key(text)


_KEY_GONE = (CloseCode.UNAUTHENTICATED, reason("KEY_REVOKED", "the API key was revoked or expired"))
_ENDED = (CloseCode.NORMAL, reason("EXECUTION_ENDED", "the terminal event was sent"))
_FEED_STOPPED = (
    CloseCode.TRY_AGAIN_LATER,
    reason("GATEWAY_STOPPING", "reconnect with the last cursor"),
)


async def pump(
    ws: WebSocket, views: AsyncGenerator[View | None, None], ended: tuple[int, str] = _ENDED
) -> tuple[int, str]:
    """Send each view as a JSON text frame while listening for the client's close, which
    ends it at once (a quiet trail would otherwise hold its subscription and the key's
    slot); ``None`` from ``views`` means the key went. The close to send, once it ends."""
    sending = asyncio.ensure_future(_send(ws, views, ended))
    listening = asyncio.ensure_future(_until_disconnect(ws))
    try:
        await asyncio.wait({sending, listening}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sending, listening):
            task.cancel()
        await asyncio.gather(sending, listening, return_exceptions=True)
        await views.aclose()
    if sending.cancelled():
        raise WebSocketDisconnect(1001)
    return sending.result()


async def _send(
    ws: WebSocket, views: AsyncGenerator[View | None, None], ended: tuple[int, str]
) -> tuple[int, str]:
    async for view in views:
        if view is None:
            return _KEY_GONE
        await ws.send_text(orjson.dumps(view).decode())
    return ended


async def _until_disconnect(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends until it closes."""
    while (await ws.receive())["type"] != "websocket.disconnect":
        pass


__all__ = [
    "AUTH_TIMEOUT_S",
    "KeySockets",
    "Refused",
    "auth_message_key",
    "authenticate",
    "follow_execution",
    "parse_after",
    "pump",
]
