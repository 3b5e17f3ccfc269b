"""The gateway's public HTTP API, as the console calls it (the only way it reaches AI Spine).

Each call carries the session's own key; the gateway decides what it may see and do, so the
console never widens a user's rights. Errors keep the gateway's status, code and message
(and its ``problems``/``errors`` details) so pages can show them where they belong."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

API = "/api/v1"


@dataclass
class GatewayError(Exception):
    """A non-2xx answer of the gateway (or 503 when it could not be reached)."""

    status: int
    code: str
    message: str
    body: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def _error(response: httpx.Response) -> GatewayError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code") or body.get("error_code") or "ERROR")
    message = body.get("message") or body.get("detail") or response.reason_phrase
    if not isinstance(message, str):
        message = str(message)
    return GatewayError(response.status_code, code, message, body)


class Gateway:
    """One pooled client for every session; the key travels per call."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s),
            trust_env=False,
            follow_redirects=False,
        )
        # live pages hold a stream each for as long as they are open: their own pool, so
        # a hundred open tabs never starve the page requests of connections
        self._streams = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s, read=None),
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._streams.aclose()

    async def call(
        self,
        method: str,
        path: str,
        key: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {key}"}
        if content_type:
            headers["Content-Type"] = content_type
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "", [])}
        try:
            response = await self._http.request(
                method,
                API + path,
                params=clean,
                json=json,
                content=content,
                headers=headers,
            )
        except httpx.TransportError as exc:
            raise GatewayError(
                503, "GATEWAY_UNREACHABLE", f"the gateway did not answer: {exc}"
            ) from exc
        if response.status_code >= 400:
            raise _error(response)
        if not response.content:
            return None
        return orjson.loads(response.content)

    async def get(self, path: str, key: str, **params: Any) -> Any:
        return await self.call("GET", path, key, params=params)

    async def post(self, path: str, key: str, json: Any = None) -> Any:
        return await self.call("POST", path, key, json=json if json is not None else {})

    async def healthy(self) -> bool:
        try:
            return (await self._http.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    @asynccontextmanager
    async def stream(
        self, path: str, key: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """An SSE stream of the gateway as parsed frames ``{"id", "event", "data"}``."""
        headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            async with self._streams.stream("GET", API + path, headers=headers) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error(response)
                yield _frames(response)
        except httpx.TransportError as exc:
            raise GatewayError(
                503, "GATEWAY_UNREACHABLE", f"the gateway did not answer: {exc}"
            ) from exc


async def _frames(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    frame: dict[str, Any] = {}
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                frame["data"] = "\n".join(data)
                yield frame
            frame, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("id", "event"):
            frame[name] = value
