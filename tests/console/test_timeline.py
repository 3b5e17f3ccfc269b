"""The timeline's geometry: bars on one axis from the execution's creation."""

from __future__ import annotations

from datetime import UTC, datetime

from spine_console.timeline import LABEL_W, PLOT_W, build, elapsed_ms

T0 = "2026-12-07T12:00:00+00:00"
NOW = datetime(2026, 12, 7, 12, 0, 10, tzinfo=UTC)


def node(status: str, start: str | None, end: str | None = None) -> dict[str, object]:
    return {"status": status, "started_at": start, "completed_at": end}


def test_bars_are_placed_relative_to_the_execution_start() -> None:
    tl = build(
        {"created_at": T0, "completed_at": "2026-12-07T12:00:04+00:00"},
        {
            "a": node("completed", "2026-12-07T12:00:00+00:00", "2026-12-07T12:00:01+00:00"),
            "b": node("completed", "2026-12-07T12:00:01+00:00", "2026-12-07T12:00:04+00:00"),
            "c": node("skipped", None),
        },
        NOW,
    )
    assert tl is not None
    assert tl.span_ms == 4000
    a, b, c = tl.bars
    assert (a.x, a.width) == (LABEL_W, PLOT_W / 4)
    assert (b.x, b.width) == (LABEL_W + PLOT_W / 4, 3 * PLOT_W / 4)
    assert c.x is None and c.node_id == "c"
    assert a.y < b.y < c.y and tl.height > c.y
    assert [t.ms for t in tl.ticks] == [0, 1000, 2000, 3000, 4000]


def test_a_running_node_runs_until_now_and_an_instant_still_shows() -> None:
    tl = build(
        {"created_at": T0, "completed_at": None},
        {
            "quick": node("completed", "2026-12-07T12:00:00+00:00", "2026-12-07T12:00:00+00:00"),
            "slow": node("running", "2026-12-07T12:00:02+00:00"),
        },
        NOW,
    )
    assert tl is not None and tl.span_ms == 10_000
    quick, slow = tl.bars
    assert quick.width == 2.0 and not quick.open
    assert slow.open and slow.duration_ms == 8000
    assert slow.x is not None and slow.x + slow.width <= LABEL_W + PLOT_W + 0.01


def test_an_ended_execution_closes_its_unfinished_nodes_at_its_end() -> None:
    tl = build(
        {"created_at": T0, "completed_at": "2026-12-07T12:00:05+00:00"},
        {"w": node("cancelled", "2026-12-07T12:00:01+00:00")},
        NOW,
    )
    assert tl is not None and tl.bars[0].duration_ms == 4000 and tl.span_ms == 5000


def test_nothing_started_is_no_timeline_and_bad_times_are_ignored() -> None:
    assert build({"created_at": T0}, {"a": node("pending", None)}, NOW) is None
    assert build({"created_at": T0}, {"a": node("running", "not a time")}, NOW) is None
    assert build({"created_at": T0}, None, NOW) is None


def test_elapsed_is_until_the_end_or_now() -> None:
    assert elapsed_ms({"created_at": T0, "completed_at": "2026-12-07T12:00:01.5Z"}, NOW) == 1500
    assert elapsed_ms({"created_at": T0, "completed_at": None}, NOW) == 10_000
    assert elapsed_ms({}, NOW) is None
