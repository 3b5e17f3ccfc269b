"""The execution WebSocket's pure parts (no I/O): the query and the auth message, the close
code of each refusal, the per-key cap, the frame shape, the routes at both prefixes, and the
trail wrapper that ends with its consumer (the real stack: tests/e2e/test_gateway_ws_e2e.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from spine_contracts.sockets import CloseCode, ExecutionEventFrame
from spine_gateway.app import create_app
from spine_gateway.errors import (
    Forbidden,
    GatewayError,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from spine_gateway.executions import while_valid
from spine_gateway.live import event_view
from spine_gateway.settings import GatewaySettings
from spine_gateway.sockets import KeySockets, Refused, auth_message_key, parse_after, refusal


@pytest.mark.parametrize(
    ("raw", "after"),
    [(None, None), ("", None), ("0", 0), ("17", 17), ("-5", -1), (str(2**31 - 1), 2**31 - 1)],
)
def test_after_is_read_as_last_event_id_is(raw: str | None, after: int | None) -> None:
    assert parse_after(raw) == after


@pytest.mark.parametrize("raw", ["abc", "1.5", "0x10", "7;1", " 3", str(2**31), "9" * 40])
def test_a_bad_after_is_4422(raw: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_after(raw)
    assert refused.value.code == CloseCode.INVALID
    assert refused.value.reason.startswith("VALIDATION_ERROR: ")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"type": "auth", "api_key": "sk_abc"}', "sk_abc"),
        ('{"type": "auth", "api_key": "  sk_abc \\n"}', "sk_abc"),
        ('{"type": "auth", "api_key": ""}', None),  # no key: as a request without a header
        ('{"type": "auth"}', None),
    ],
)
def test_the_auth_message_names_a_key(text: str, key: str | None) -> None:
    assert auth_message_key(text) == key


@pytest.mark.parametrize(
    "text",
    ["sk_abc", "", "[]", '"auth"', '{"api_key": "sk_abc"}', '{"type": "hello"}', "{", "null"],
)
def test_anything_else_first_is_4401(text: str) -> None:
    with pytest.raises(Refused) as refused:
        auth_message_key(text)
    assert (refused.value.code, refused.value.reason.split(":")[0]) == (4401, "AUTH_REQUIRED")


def test_a_key_that_is_not_a_string_is_4401() -> None:
    with pytest.raises(Refused) as refused:
        auth_message_key('{"type": "auth", "api_key": 12}')
    assert refused.value.code == CloseCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Unauthorized("invalid API key", code="INVALID_API_KEY"), 4401),
        (Forbidden("this key lacks the scope", code="FORBIDDEN_SCOPE"), 4403),
        (NotFound("execution 'x' not found", code="EXECUTION_NOT_FOUND"), 4404),
        (InvalidInput("bad"), 4422),
        (RateLimited("rate limit of 5 requests per minute exceeded"), 4429),
        (Unavailable("the development user is not ready yet"), 1013),
        (GatewayError("internal"), 1011),
    ],
)
def test_each_gateway_error_has_its_close_code(error: GatewayError, code: int) -> None:
    closing = refusal(error)
    assert closing.code == code
    assert closing.reason == f"{error.code}: {error.message}"


def test_a_close_reason_fits_a_close_frame() -> None:
    closing = refusal(NotFound("é" * 200, code="EXECUTION_NOT_FOUND"))
    assert len(closing.reason.encode()) <= 123
    assert closing.reason.startswith("EXECUTION_NOT_FOUND: é")


def test_sockets_are_capped_per_key_and_released_on_close() -> None:
    sockets = KeySockets(2)
    with sockets.hold("key_a"), sockets.hold("key_a"):
        with pytest.raises(Refused) as refused, sockets.hold("key_a"):
            pass
        assert (refused.value.code, refused.value.reason.split(":")[0]) == (
            4429,
            "TOO_MANY_SOCKETS",
        )
        with sockets.hold("key_b"):  # another key has its own
            assert sockets.open("key_b") == 1
        assert sockets.open("key_a") == 2
    assert sockets.open("key_a") == 0
    with pytest.raises(RuntimeError), sockets.hold("key_a"):
        raise RuntimeError("the socket failed")
    assert sockets.open("key_a") == 0  # released even so


def test_a_frame_is_the_sse_data() -> None:
    at = datetime(2026, 12, 7, 12, tzinfo=UTC)
    view = event_view(3, "execution.node_completed", {"node_id": "a"}, at)
    frame = ExecutionEventFrame.model_validate(view)
    assert frame.model_dump() == view
    assert ExecutionEventFrame.model_validate(event_view(0, "execution.started", {}, None))


def test_the_cap_is_a_setting() -> None:
    # (both paths, /api/v1 and the root, are exercised on the real stack)
    assert create_app(GatewaySettings(API_KEY="x" * 20)).state.sockets.limit == 20
    settings = GatewaySettings(API_KEY="x" * 20, SPINE_GATEWAY_WS_MAX_PER_KEY="3")
    assert create_app(settings).state.sockets.limit == 3


async def test_a_trail_ends_with_its_consumer_even_mid_wait() -> None:
    """A client gone while the trail waits for its next event (the consumer's task is
    cancelled): the trail's own clean-up runs (its subscription ends) at once."""
    ended = asyncio.Event()
    waiting = asyncio.Event()

    async def trail() -> AsyncIterator[int]:
        try:
            yield 1
            waiting.set()
            await asyncio.Event().wait()  # a quiet execution
            yield 2
        finally:
            ended.set()

    async def valid() -> bool:
        return True

    async def consume() -> None:
        async for _ in while_valid(trail(), valid):
            pass

    task = asyncio.ensure_future(consume())
    await waiting.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    async with asyncio.timeout(1):
        await ended.wait()
