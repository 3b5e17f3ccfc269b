"""The pure parts of the live feed and the usage series: feed cursors, the order of a read's
rows, and the validation of a usage range (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from spine_gateway.errors import InvalidInput
from spine_gateway.feed import (
    MAX_CURSOR_CHARS,
    CursorError,
    format_cursor,
    in_order,
    moved_from,
    parse_cursor,
)
from spine_gateway.usage_series import MAX_BUCKETS, ceil_to, floor_to, usage_range

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)


# --- feed cursors ---------------------------------------------------------------------------


def test_a_cursor_round_trips_in_partition_order() -> None:
    assert parse_cursor("1:17,0:41") == {1: 17, 0: 41}
    assert format_cursor({1: 17, 0: 41}) == "0:41,1:17"
    assert parse_cursor(format_cursor({0: -1, 2: 9})) == {0: -1, 2: 9}
    assert parse_cursor(" 0:5 , 1:-1") == {0: 5, 1: -1}  # spaces around pairs are tolerated


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "0",
        "0:",
        ":5",
        "0:5,",
        "0:5;1:2",
        "-1:5",
        "0:-2",
        "0:1.5",
        "0:0x10",
        "0:5,0:6",  # a partition twice
        "0:" + "9" * 20,  # beyond a Kafka offset
        "1000001:1",
        "0:1\n1:2",
        "x" * (MAX_CURSOR_CHARS + 1),
    ],
)
def test_anything_else_is_not_a_cursor(bad: str) -> None:
    with pytest.raises(CursorError):
        parse_cursor(bad)


def test_the_largest_offset_is_a_cursor() -> None:
    assert parse_cursor(f"0:{2**63 - 1}") == {0: 2**63 - 1}
    with pytest.raises(CursorError):
        parse_cursor(f"0:{2**63}")


def _row(partition: int, offset: int, second: int) -> dict[str, Any]:
    return {
        "kafka_partition": partition,
        "kafka_offset": offset,
        "occurred_at": T0 + timedelta(seconds=second),
    }


def test_rows_keep_each_partitions_offset_order_and_merge_by_time() -> None:
    # partition 0's second event says it happened before its first (another producer's
    # clock): the cursor needs offset order within a partition all the same
    rows = [_row(1, 4, 2), _row(0, 8, 1), _row(0, 7, 3), _row(1, 3, 0)]
    got = [(r["kafka_partition"], r["kafka_offset"]) for r in in_order(rows)]
    assert got == [(1, 3), (1, 4), (0, 7), (0, 8)]  # 0:8 waits for 0:7, whatever its time
    for p in (0, 1):
        offsets = [o for q, o in got if q == p]
        assert offsets == sorted(offsets)


def test_a_wait_ends_once_a_batch_moved_the_offsets() -> None:
    before = {"tp0": 5, "tp1": 2}
    moved = moved_from(before)
    before["tp0"] = 6  # the snapshot is the predicate's own
    assert not moved({"tp0": 5, "tp1": 2})
    assert moved({"tp0": 6, "tp1": 2})
    assert moved({"tp0": 5, "tp1": 2, "tp2": 1})  # a partition assigned since


# --- usage ranges ---------------------------------------------------------------------------


def test_edges_round_to_utc_hours_and_days() -> None:
    at = datetime(2026, 3, 1, 10, 29, 59, 1, tzinfo=UTC)
    assert floor_to(at, HOUR) == T0 and ceil_to(at, HOUR) == T0 + HOUR
    assert floor_to(T0, HOUR) == ceil_to(T0, HOUR) == T0
    assert floor_to(at, DAY) == datetime(2026, 3, 1, tzinfo=UTC)
    assert ceil_to(at, DAY) == datetime(2026, 3, 2, tzinfo=UTC)


def test_the_default_is_the_24_hours_up_to_the_current_one() -> None:
    now = T0 + timedelta(minutes=17)
    span = usage_range(None, None, "hour", now)
    assert span.count == 24 and span.step == HOUR
    assert span.end == T0 + HOUR and span.start == T0 + HOUR - 24 * HOUR
    assert span.start <= now < span.end
    days = usage_range(None, None, "day", now)
    assert days.count == 24 and days.end == datetime(2026, 3, 2, tzinfo=UTC)


def test_a_range_is_widened_to_whole_buckets() -> None:
    span = usage_range(T0 + timedelta(minutes=5), T0 + timedelta(hours=2, minutes=1), "hour", T0)
    assert (span.start, span.end, span.count) == (T0, T0 + 3 * HOUR, 3)
    exact = usage_range(T0, T0 + HOUR, "hour", T0)
    assert exact.count == 1
    only_to = usage_range(None, T0, "hour", T0 + 100 * DAY)  # `to` without `from`
    assert (only_to.end, only_to.count) == (T0, 24)


def test_times_with_an_offset_or_none_are_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    span = usage_range(
        datetime(2026, 3, 1, 12, 0, tzinfo=plus2), datetime(2026, 3, 1, 11, 0), "hour", T0
    )
    assert (span.start, span.end, span.count) == (T0, T0 + HOUR, 1)


@pytest.mark.parametrize(
    ("start", "end", "bucket"),
    [
        (T0, T0, "hour"),  # empty
        (T0 + HOUR, T0, "hour"),  # backwards
        (T0, T0 + HOUR, "week"),
        (T0, T0 + HOUR, ""),
        (T0, T0 + (MAX_BUCKETS + 1) * HOUR, "hour"),
        (T0, T0 + (MAX_BUCKETS + 1) * DAY, "day"),
        (T0, T0 + MAX_BUCKETS * HOUR + timedelta(seconds=1), "hour"),  # widened past it
        (datetime(1, 1, 1, 0, 30, tzinfo=UTC), T0, "day"),
        (T0, datetime(9999, 12, 31, 23, 30, tzinfo=UTC), "hour"),  # past year 9999
    ],
)
def test_bad_ranges_are_422(start: datetime, end: datetime, bucket: str) -> None:
    with pytest.raises(InvalidInput):
        usage_range(start, end, bucket, T0)


def test_the_largest_range_is_allowed() -> None:
    assert usage_range(T0, T0 + MAX_BUCKETS * HOUR, "hour", T0).count == MAX_BUCKETS
    midnight = floor_to(T0, DAY)
    assert usage_range(midnight, midnight + MAX_BUCKETS * DAY, "day", T0).count == MAX_BUCKETS
