"""Size limits: request bodies (an ASGI middleware) and the Kafka messages the gateway
publishes. Both answer ``413 PAYLOAD_TOO_LARGE`` in the API's one error shape.

* :class:`BodySizeLimit` refuses a request whose ``Content-Length`` is over the limit before
  the application sees it, and counts the bytes of a body sent without one (chunked) as
  they arrive, refusing it as soon as the count passes the limit: a body is never buffered
  beyond ``max_bytes``.
* :func:`check_message_size` refuses a command or event whose serialized envelope would not
  fit in one Kafka message (the producer's ``max_request_size``, which the broker's
  ``message.max.bytes`` must allow) with room for what the services downstream add to it:
  an execution's ``input_data`` travels on in ``StartExecution``, ``ExecutionStarted`` and
  every ``NodeDispatched``, each with its own envelope.
"""

from __future__ import annotations

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLarge, error_body

CODE = PayloadTooLarge.default_code
#: what the services downstream may add to a message the gateway publishes (envelopes,
#: node ids, the flow's definition repeated, the conversation's bookkeeping)
MESSAGE_HEADROOM_BYTES = 64 * 1024


class _BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit; FastAPI re-raises
    HTTP exceptions from body parsing, so the app's handler answers it (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodySizeLimit:
    """Pure ASGI middleware: at most ``max_bytes`` of request body, else 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _refuse(send, self.max_bytes)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:  # the application answered already, then read on: nothing to add
                raise
            await _refuse(send, self.max_bytes)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None


async def _refuse(send: Send, limit: int) -> None:
    body = orjson.dumps(error_body(CODE, f"request body larger than {limit} bytes"))
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def message_budget(max_message_bytes: int) -> int:
    """The largest serialized message the gateway publishes for this Kafka message limit."""
    return max(max_message_bytes - MESSAGE_HEADROOM_BYTES, max_message_bytes // 2)


def check_message_size(value: bytes, max_message_bytes: int, what: str) -> None:
    """Raise :class:`PayloadTooLarge` when ``value`` would not fit (see the module doc)."""
    budget = message_budget(max_message_bytes)
    if len(value) > budget:
        raise PayloadTooLarge(
            f"{what} too large: {len(value)} bytes as a message, at most {budget} "
            f"(the Kafka message limit is {max_message_bytes} bytes)",
            extra={"size": len(value), "limit": budget},
        )
