"""WebSockets: one execution's trail (``sockets.py`` holds the handshake and the close
codes; OpenAPI cannot describe a WebSocket, ``docs/asyncapi.yaml`` does)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from ..sockets import follow_execution, follow_feed

router = APIRouter(tags=["executions"])


@router.websocket("/executions/ws")
async def feed_socket(websocket: WebSocket) -> None:
    """The items of ``GET /executions/stream`` (the live feed), one JSON text frame each."""
    state = websocket.app.state
    await follow_feed(websocket, state.gateway, state.sockets)


@router.websocket("/executions/{execution_id}/ws")
async def execution_socket(websocket: WebSocket, execution_id: str) -> None:
    """The events of ``GET /executions/{id}/stream``, one JSON text frame each."""
    state = websocket.app.state
    await follow_execution(websocket, state.gateway, state.sockets, execution_id)
