"""Keyset cursors and list filters (``spine_gateway.listing``, the adapter's SQL): no I/O."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from spine_contracts import TERMINAL_STATUSES
from spine_gateway.adapters.postgres import execution_count_sql, execution_page_sql, like_prefix
from spine_gateway.errors import InvalidInput
from spine_gateway.listing import (
    EXECUTION_STATUSES,
    ExecutionFilter,
    PageKey,
    decode_cursor,
    encode_cursor,
    execution_filter,
    parse_statuses,
)

AT = datetime(2026, 12, 7, 17, 1, 2, 345678, tzinfo=UTC)


@pytest.mark.parametrize(
    ("at", "row_id"),
    [
        (AT, "0b5c3a7e-93f5-4a51-9e0b-2b1f1d2f0c11"),
        (datetime(1970, 1, 1, tzinfo=UTC), "a"),
        (datetime(1969, 7, 20, 20, 17, 40, 1, tzinfo=UTC), "user_x:1@b.c-d"),
        (datetime(9999, 12, 29, tzinfo=UTC), "x" * 128),
    ],
)
def test_a_cursor_names_its_position_exactly(at: datetime, row_id: str) -> None:
    cursor = encode_cursor("e", at, row_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)  # URL-safe, no padding
    assert decode_cursor("e", cursor) == PageKey(at, row_id)


def test_a_cursor_keeps_the_instant_of_another_offset_and_of_a_naive_utc_time() -> None:
    plus2 = AT.astimezone(timezone(timedelta(hours=2)))
    assert decode_cursor("e", encode_cursor("e", plus2, "x")).created_at == AT
    naive = AT.replace(tzinfo=None)
    assert decode_cursor("e", encode_cursor("e", naive, "x")).created_at == AT


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "abc",  # not a whole base64 group
        _b64("e:12"),  # two parts
        _b64("x:12:abc"),  # another kind
        _b64("u:12:abc"),  # a users cursor on the executions list
        _b64("e:twelve:abc"),
        _b64("e:12:"),  # no id
        _b64("e:12:a b"),  # not an id character
        _b64("e:12:a%"),
        _b64("e:999999999999999999:abc"),  # beyond year 9999
        _b64("e:-999999999999999999:abc"),
        _b64("e:1234567890123456789012:abc"),
        _b64("e:12:abc") + "==",  # padding: not what the gateway hands out
        _b64("e:12:abc") + "\n",
        "A" * 600,
        base64.urlsafe_b64encode(b"e:12:\xff\xfe").decode(),  # not text
    ],
)
def test_a_malformed_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidInput, match="cursor is malformed"):
        decode_cursor("e", cursor)


def test_the_known_statuses_are_the_read_models() -> None:
    assert set(EXECUTION_STATUSES) == {"queued", "running", "waiting_input"} | TERMINAL_STATUSES
    assert "pending" not in EXECUTION_STATUSES  # only ever an execute's answer


def test_statuses_are_repeated_or_comma_separated_and_deduplicated() -> None:
    assert parse_statuses(["running"]) == ("running",)
    assert parse_statuses(["running,failed", "failed", " queued"]) == (
        "running",
        "failed",
        "queued",
    )
    assert parse_statuses([]) == ()


@pytest.mark.parametrize("value", ["bogus", "Running", "", "running,", "x" * 500])
def test_an_unknown_status_is_422_naming_the_allowed_ones(value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_statuses([value])
    assert "allowed: queued, running, waiting_input, cancelled, completed, failed" in str(
        caught.value
    )
    assert caught.value.extra["allowed"] == list(EXECUTION_STATUSES)
    assert len(caught.value.message) < 200  # a long value is cut in the message


def test_a_filter_checks_its_dates_and_id_prefix() -> None:
    f = execution_filter(
        user_id="u1",
        statuses=["failed"],
        created_from=AT.replace(tzinfo=None),
        created_to=AT,
        id_prefix="0b5c",
    )
    assert f == ExecutionFilter("u1", ("failed",), None, AT, AT, "0b5c")  # naive is UTC
    with pytest.raises(InvalidInput, match="created_from must not be after created_to"):
        execution_filter(user_id=None, created_from=AT, created_to=AT - timedelta(microseconds=1))
    plus1 = timezone(timedelta(hours=1))
    early = datetime(1, 1, 1, tzinfo=plus1)  # before year 1 in UTC
    with pytest.raises(InvalidInput, match="out of range"):
        execution_filter(user_id=None, created_from=early)
    f = execution_filter(user_id=None, created_to=AT.astimezone(plus1))
    assert f.created_to == AT and f.created_to.tzinfo is UTC
    for bad in ("", "a%", "a b", "é", "x" * 129):
        with pytest.raises(InvalidInput, match="id_prefix"):
            execution_filter(user_id=None, id_prefix=bad)


def test_like_prefix_escapes_the_wildcards_an_id_may_hold() -> None:
    assert like_prefix("ab") == "ab%"
    assert like_prefix("user_1") == "user\\_1%"
    assert like_prefix("a%\\") == "a\\%\\\\%"


def test_the_page_statement_holds_only_the_conditions_in_use() -> None:
    sql, args = execution_page_sql(ExecutionFilter(), after=None, limit=51)
    assert "WHERE" not in sql and args == [51, 0]
    assert sql.endswith("ORDER BY created_at DESC, execution_id DESC LIMIT $1 OFFSET $2")
    f = ExecutionFilter("u1", ("running", "queued"), "flow", AT, AT, "ab_")
    sql, args = execution_page_sql(f, after=PageKey(AT, "x"), limit=11, offset=0)
    assert (
        "WHERE user_id = $1 AND status = ANY($2::text[]) AND flow_id = $3 AND created_at >= $4"
        " AND created_at <= $5 AND execution_id LIKE $6 ESCAPE '\\'"
        " AND (created_at, execution_id) < ($7, $8) ORDER BY" in sql
    )
    assert args == ["u1", ["running", "queued"], "flow", AT, AT, "ab\\_%", AT, "x", 11, 0]
    sql, args = execution_count_sql(ExecutionFilter("u1", ("failed",)))
    assert sql == "SELECT count(*) FROM executions WHERE user_id = $1 AND status = $2"
    assert args == ["u1", "failed"]
