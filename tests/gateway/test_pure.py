"""Pure parts of the gateway: keys, error mapping and shape, rate-limit arithmetic."""

from __future__ import annotations

import hashlib

import pytest
from spine_gateway.errors import (
    Conflict,
    InsufficientCredits,
    NotFound,
    RateLimited,
    code_for_status,
    error_body,
    from_reply,
)
from spine_gateway.keys import bearer_token, generate_key, hash_key, same_secret
from spine_gateway.ratelimit import decide, window_start


def test_generated_keys_are_prefixed_random_and_43_chars() -> None:
    keys = {generate_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith("sk_") and len(key) == 3 + 43
        assert all(c.isalnum() or c in "-_" for c in key[3:])


def test_hash_is_hex_sha256_and_comparison_is_exact() -> None:
    key = "sk_abc"
    assert hash_key(key) == hashlib.sha256(b"sk_abc").hexdigest()
    assert len(hash_key(key)) == 64
    assert same_secret(hash_key(key), hash_key("sk_abc"))
    assert not same_secret(hash_key(key), hash_key("sk_abd"))


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer sk_1", "sk_1"),
        ("bearer   sk_1 ", "sk_1"),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("code", "cls", "status"),
    [
        ("INSUFFICIENT_CREDITS", InsufficientCredits, 402),
        ("USER_EXISTS", Conflict, 409),
        ("USER_NOT_FOUND", NotFound, 404),
        ("RESERVATION_WITHDRAWN", Conflict, 409),
        ("SOMETHING_NEW", Conflict, 409),
    ],
)
def test_reply_codes_map_to_typed_errors(code: str, cls: type, status: int) -> None:
    err = from_reply(code, "why")
    assert isinstance(err, cls) and err.status == status
    assert err.code == code and err.message == "why"


def test_error_body_has_the_sdk_fields() -> None:
    body = error_body("RATE_LIMITED", "slow down", retry=1)
    assert body == {
        "detail": "slow down",
        "code": "RATE_LIMITED",
        "message": "slow down",
        "error_code": "RATE_LIMITED",
        "retry": 1,
    }
    assert RateLimited("x").status == 429
    assert code_for_status(405) == "METHOD_NOT_ALLOWED"
    assert code_for_status(502) == "INTERNAL_ERROR"


def test_rate_limit_within_and_over_the_window() -> None:
    now = 1_000_000.0 + 15.5  # 15.5 s into a window starting at 1_000_000 - 1_000_000 % 60
    start = window_start(now, 60)
    assert start % 60 == 0 and start <= now < start + 60
    first = decide(1, 3, now)
    assert first.allowed and first.remaining == 2 and first.reset_at == start + 60
    assert "Retry-After" not in first.headers()
    last = decide(3, 3, now)
    assert last.allowed and last.remaining == 0
    over = decide(4, 3, now)
    assert not over.allowed and over.remaining == 0
    assert over.retry_after == int(start + 60 - now) + 1  # ceil of the time left
    headers = over.headers()
    assert headers["X-RateLimit-Limit"] == "3"
    assert headers["Retry-After"] == str(over.retry_after)


def test_retry_after_is_at_least_one_second() -> None:
    now = 119.999
    assert decide(5, 1, now).retry_after == 1
