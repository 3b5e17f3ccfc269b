"""How the console reads the gateway's answers: its error shape and its SSE frames."""

from __future__ import annotations

import httpx
from spine_console.gateway import _error, _frames


def test_error_keeps_status_code_message_and_details() -> None:
    body = {
        "detail": "bad flow",
        "code": "INVALID_FLOW",
        "message": "bad flow",
        "error_code": "INVALID_FLOW",
        "problems": [{"node": "a", "field": "agent", "message": "unknown agent"}],
    }
    error = _error(httpx.Response(422, json=body))
    assert (error.status, error.code, error.message) == (422, "INVALID_FLOW", "bad flow")
    assert error.body["problems"][0]["node"] == "a"


def test_error_of_a_body_that_is_not_json() -> None:
    error = _error(httpx.Response(502, content=b"<html>bad gateway</html>"))
    assert error.status == 502 and error.code == "ERROR" and error.message == "Bad Gateway"


async def test_sse_frames_parse_ids_events_multiline_data_and_skip_comments() -> None:
    raw = (
        b": keepalive\n\n"
        b'id: 3\nevent: execution.node_completed\ndata: {"a":\ndata: 1}\n\n'
        b"event: feed.ready\ndata: {}\n\n"
        b"id: 4\n\n"
    )
    frames = [f async for f in _frames(httpx.Response(200, content=raw))]
    assert frames == [
        {"id": "3", "event": "execution.node_completed", "data": '{"a":\n1}'},
        {"event": "feed.ready", "data": "{}"},
    ]
