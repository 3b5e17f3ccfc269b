"""The gateway's commands on the bus: publish one, or ask one and await its reply.

Asking is request/reply over Kafka with a correlation id (``request_id``) and this replica
as the reply-to: auth answers every command it decides with a ``GatewayReply`` on
``spine.gateway.replies``, and only the replica that asked reads it (adapters.kafka.Replies).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiokafka import TopicPartition
from spine_contracts import GatewayReply, Message
from spine_contracts.topics import TopicSpec

from .adapters.kafka import Publisher, Replies
from .errors import Unavailable, from_reply


def new_request_id() -> str:
    return uuid.uuid4().hex


class Commands:
    def __init__(self, publisher: Publisher, replies: Replies, reply_timeout_s: float) -> None:
        self.publisher = publisher
        self.replies = replies
        self.reply_timeout_s = reply_timeout_s

    async def publish(
        self, spec: TopicSpec, key: str, message: Message, *, what: str | None = None
    ) -> tuple[TopicPartition, int]:
        """Send and return the record's partition and next offset (its read-your-writes
        position, see ``visibility``)."""
        return await self.publisher.publish(spec, key, message, what=what)

    async def publish_for_reply(self, spec: TopicSpec, key: str, message: Message) -> None:
        """Send with this replica as reply-to; the caller expects the reply itself."""
        await self.publisher.publish(spec, key, message, reply_to=self.replies.replica_id)

    async def request(
        self,
        spec: TopicSpec,
        key: str,
        message: Message,
        request_id: str,
        *,
        what: str | None = None,
        allowance: int = 0,
    ) -> GatewayReply:
        """Send with this replica as reply-to and await the reply (``TimeoutError`` after
        ``reply_timeout_s``)."""
        fut = self.replies.expect(request_id)
        try:
            await self.publisher.publish(
                spec,
                key,
                message,
                reply_to=self.replies.replica_id,
                what=what,
                allowance=allowance,
            )
            async with asyncio.timeout(self.reply_timeout_s):
                return await fut
        finally:
            self.replies.forget(request_id)

    async def ask(
        self, spec: TopicSpec, key: str, message: Message, request_id: str
    ) -> dict[str, Any]:
        """:meth:`request`, with the reply's refusal raised as its typed error and a
        missing reply as 503; the reply's body otherwise."""
        try:
            reply = await self.request(spec, key, message, request_id)
        except TimeoutError as exc:
            raise Unavailable("no answer from the auth service in time") from exc
        if not reply.data.ok:
            raise from_reply(reply.data.error_code, reply.data.message, reply.data.body)
        return dict(reply.data.body)
