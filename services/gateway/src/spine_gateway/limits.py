"""Size limits: request bodies (an ASGI middleware) and the Kafka messages the gateway
publishes. Both answer ``413 PAYLOAD_TOO_LARGE`` in the API's one error shape.

* :class:`BodySizeLimit` refuses a request whose ``Content-Length`` is over the limit before
  the application sees it, and counts the bytes of a body sent without one (chunked) as
  they arrive, refusing it as soon as the count passes the limit: a body is never buffered
  beyond ``max_bytes``.
* :func:`check_message_size` refuses a command or event whose serialized envelope would not
  fit in one Kafka message (``KafkaConfig.max_value_bytes``: ``SPINE_KAFKA_MAX_MESSAGE_BYTES``
  less the record overhead, docs/limits.md) with room for what the services downstream add
  to it: an execution's ``input_data`` travels on in ``StartExecution``, ``ExecutionStarted``,
  the orchestrator's snapshot of the execution and every first task (``AgentMessage`` and
  ``NodeDispatched``), each with its own envelope. The snapshot is the largest of them: it
  also holds the state of every node of the flow, so an execution's start is allowed
  :func:`execution_allowance` more room (``tests/gateway/test_limits_downstream.py`` runs
  the largest start the gateway accepts through auth and the orchestrator and checks that
  every record fits).
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLarge, error_body

CODE = PayloadTooLarge.default_code
#: what the services downstream may add to a message the gateway publishes (envelopes,
#: ids, the execution's bookkeeping in the orchestrator's snapshot)
MESSAGE_HEADROOM_BYTES = 64 * 1024
#: what the orchestrator's snapshot of a starting execution holds per node of its flow,
#: besides the node's id four times over: its state and its timeout timer (about 300 bytes)
NODE_STATE_BYTES = 512


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


def execution_allowance(node_ids: Iterable[str]) -> int:
    """The room a starting execution of a flow with these nodes takes besides its start."""
    return sum(NODE_STATE_BYTES + 4 * len(node_id) for node_id in node_ids)


def message_budget(max_value_bytes: int, allowance: int = 0) -> int:
    """The largest serialized message the gateway publishes for this Kafka message limit
    (``KafkaConfig.max_value_bytes``), ``allowance`` more room left for what follows it."""
    headroom = min(MESSAGE_HEADROOM_BYTES, max_value_bytes // 2)
    return max(max_value_bytes - headroom - allowance, 0)


def check_message_size(value: bytes, max_value_bytes: int, what: str, allowance: int = 0) -> None:
    """Raise :class:`PayloadTooLarge` when ``value`` would not fit (see the module doc)."""
    budget = message_budget(max_value_bytes, allowance)
    if len(value) > budget:
        raise PayloadTooLarge(
            f"{what} too large: {len(value):,} bytes as a message, at most {budget:,} "
            f"(the {max_value_bytes:,}-byte message limit less {max_value_bytes - budget:,} "
            f"for what the services add on the way; docs/limits.md)",
            extra={"size": len(value), "limit": budget},
        )
