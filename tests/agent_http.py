"""A tiny HTTP/1.1 server on 127.0.0.1 for tests of the relay: a real socket, so the
relay's guarded client, its signing and its error messages meet the network for real.

It records every request (method, target, headers, the exact body bytes) and answers with
a fixed reply, or one computed from the request (by a coroutine, if the answer has to wait
for the test); one request per connection.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson


@dataclass(frozen=True)
class Received:
    method: str
    target: str
    #: header names lower-cased
    headers: dict[str, str]
    body: bytes


Reply = bytes | Callable[[Received], bytes | Awaitable[bytes]]


@dataclass
class Server:
    """Answers every request with ``reply`` (bytes, or a function of the request)."""

    reply: Reply
    port: int = 0
    connections: int = 0
    requests: list[Received] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        method, target, _ = request_line.split(" ", 2)
        received = Received(method, target, headers, body)
        self.requests.append(received)
        answer = self.reply(received) if callable(self.reply) else self.reply
        if inspect.isawaitable(answer):
            answer = await answer
        writer.write(answer)
        await writer.drain()
        writer.close()


def http_reply(status: str, body: bytes = b"", headers: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def success(message: str = "hi") -> Callable[[Received], bytes]:
    """A contract answer to ``POST /execute`` for whichever execution asked."""

    def reply(request: Received) -> bytes:
        execution_id = orjson.loads(request.body)["execution_id"] if request.body else ""
        answer = {"status": "success", "output": {"message": message}}
        return http_reply("200 OK", orjson.dumps({**answer, "execution_id": execution_id}))

    return reply


@asynccontextmanager
async def serving(reply: Reply) -> AsyncIterator[Server]:
    server = Server(reply)
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield server
