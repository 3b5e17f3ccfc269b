"""The executions list's filters: the form's fields to the gateway's query and back."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from spine_console.queries import (
    FilterError,
    ListFilters,
    cancel_outcome,
    clean_ids,
    feed_cursor,
    local_to_utc,
    parse_tz,
)


@pytest.mark.parametrize(
    ("typed", "offset", "utc"),
    [
        ("2026-12-07T18:30", 0, "2026-12-07T18:30:00+00:00"),
        ("2026-12-07T18:30", -60, "2026-12-07T17:30:00+00:00"),  # Madrid, winter
        ("2026-12-07T22:15:30", 300, "2026-12-08T03:15:30+00:00"),  # New York: next day
        ("  ", 0, None),
        ("", -60, None),
    ],
)
def test_local_times_become_utc_instants(typed: str, offset: int, utc: str | None) -> None:
    assert local_to_utc(typed, offset) == utc


@pytest.mark.parametrize(
    "typed", ["yesterday", "2026-13-01T00:00", "2026-12-07", "0001-01-01T00:00"]
)
def test_what_is_not_a_time_is_a_filter_error(typed: str) -> None:
    with pytest.raises(FilterError):
        local_to_utc(typed, -60 if typed.startswith("0001") else 0)


@pytest.mark.parametrize(
    ("sent", "minutes"), [("-60", -60), ("330", 330), ("x", 0), (None, 0), ("99999", 0)]
)
def test_only_real_zone_offsets_count(sent: str | None, minutes: int) -> None:
    assert parse_tz(sent) == minutes


def test_the_form_becomes_the_gateways_query() -> None:
    f = ListFilters.of(
        [
            ("status", "running"),
            ("status", "queued,running"),
            ("flow_id", " credit_analysis "),
            ("created_from", "2026-12-07T10:00"),
            ("created_to", ""),
            ("id_prefix", "5f"),
            ("user_id", "user_1"),
            ("tz", "-60"),
            ("cursor", "abc"),
            ("unknown", "x"),
        ]
    )
    assert f.statuses == ("running", "queued")
    assert f.active
    assert f.gateway_params(50) == {
        "limit": 50,
        "status": ["running", "queued"],
        "flow_id": "credit_analysis",
        "id_prefix": "5f",
        "created_from": "2026-12-07T09:00:00+00:00",
        "cursor": "abc",
    }
    # only the admin may name a user
    assert f.gateway_params(50, admin=True)["user_id"] == "user_1"


def test_paging_links_keep_the_filters_and_change_only_the_page() -> None:
    f = ListFilters.of({"status": "failed", "created_from": "2026-12-07T10:00", "tz": "-60"})
    first = dict(parse_qsl(f.query()))
    assert first == {"status": "failed", "created_from": "2026-12-07T10:00", "tz": "-60"}
    older = parse_qsl(f.query(cursor="c/1=="))
    assert ("cursor", "c/1==") in older and ("status", "failed") in older
    assert ListFilters.of({}).query() == "" and not ListFilters.of({}).active


def test_bulk_ids_are_checked_once_each_and_capped() -> None:
    good, bad = clean_ids(["a1", "a1", " b2 ", "", "<x>", "c3", "d4"], most=4)
    assert good == ["a1", "b2", "c3"] and bad == ["<x>"]


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (200, "cancelled"),
        (409, "already finished"),
        (404, "not found"),
        (503, "not cancelled (503: busy)"),
    ],
)
def test_each_cancel_answer_is_said_plainly(status: int, said: str) -> None:
    assert cancel_outcome(status, "busy") == said


def test_only_feed_cursors_are_passed_back() -> None:
    assert feed_cursor("0:41,1:17") == "0:41,1:17"
    assert feed_cursor("0:41\nX: y") is None and feed_cursor(None) is None
