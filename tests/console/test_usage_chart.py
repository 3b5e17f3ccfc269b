"""Usage bar-chart geometry (spine_console.chart): scale, bars, ticks and labels."""

from __future__ import annotations

import re

import pytest
from spine_console import chart


def _hours(values: list[tuple[int, int, int]]) -> list[dict[str, object]]:
    return [
        {
            "start": f"2026-12-07T{h:02d}:00:00+00:00",
            "started": s,
            "completed": c,
            "failed": f,
            "cancelled": 0,
            "credits": s * 2,
        }
        for h, (s, c, f) in enumerate(values)
    ]


@pytest.mark.parametrize(
    ("value", "top"),
    [
        (0, 4),
        (1, 4),
        (4, 4),
        (5, 8),
        (7, 8),
        (11, 20),
        (24, 40),
        (41, 80),
        (100, 100),
        (2951, 4000),
        (84602, 100000),
    ],
)
def test_nice_max(value: float, top: int) -> None:
    assert chart.nice_max(value) == top


def test_bars_share_one_scale_and_stand_on_the_axis() -> None:
    c = chart.bars(_hours([(4, 3, 1), (0, 0, 0), (2, 2, 0)]), "hour", chart.EXECUTION_SERIES)
    assert c.max_value == 4
    assert len(c.bars) == 9
    started = c.bars[0]
    assert started.series == "started" and started.value == 4
    assert started.height == pytest.approx(c.plot_height, abs=0.01)
    assert c.bars[1].height == pytest.approx(c.plot_height * 3 / 4, abs=0.01)
    for bar in c.bars:  # every bar's bottom is the x axis
        assert bar.y + bar.height == pytest.approx(c.bottom, abs=0.02)
        assert c.left <= bar.x and bar.x + bar.width <= c.right + 0.01
    empty = [b for b in c.bars if b.value == 0]
    assert empty and all(b.height == 0 for b in empty)
    assert started.title == "Started 2026-12-07 00:00: 4"


def test_groups_do_not_overlap_and_keep_series_order() -> None:
    c = chart.bars(_hours([(1, 1, 1)] * 5), "hour", chart.EXECUTION_SERIES)
    xs = [b.x for b in c.bars]
    assert xs == sorted(xs)
    for left, right in zip(c.bars, c.bars[1:], strict=False):
        assert left.x + left.width <= right.x + 0.01
    assert [b.series for b in c.bars[:3]] == ["started", "completed", "failed"]


def test_ticks_from_zero_to_the_top() -> None:
    c = chart.bars(_hours([(7, 0, 0)]), "hour", chart.EXECUTION_SERIES)
    assert [t.text for t in c.ticks] == ["0", "2", "4", "6", "8"]
    assert c.ticks[0].y == c.bottom and c.ticks[-1].y == c.top


def test_x_labels_thin_out_and_read_per_bucket() -> None:
    c = chart.bars(_hours([(1, 0, 0)] * 24), "hour", chart.CREDIT_SERIES)
    assert len(c.labels) == 12
    assert [lb.text for lb in c.labels[:2]] == ["00:00", "02:00"]
    days = [{"start": f"2026-11-{d:02d}T00:00:00+00:00", "credits": d} for d in range(1, 31)]
    d = chart.bars(days, "day", chart.CREDIT_SERIES)
    assert len(d.labels) <= chart.MAX_X_LABELS and d.labels[0].text == "11-01"
    assert d.bars[-1].value == 30 and d.bars[-1].title == "Credits 2026-11-30: 30"


def test_empty_and_odd_input_still_draws_an_axis() -> None:
    c = chart.bars([], "hour", chart.EXECUTION_SERIES)
    assert c.bars == [] and c.max_value == 4 and len(c.ticks) == 5
    assert [t.text for t in c.ticks] == ["0", "1", "2", "3", "4"]
    odd = chart.bars(
        [{"start": "not a time", "started": None, "completed": "x", "failed": -3}],
        "day",
        chart.EXECUTION_SERIES,
    )
    assert [b.value for b in odd.bars] == [0, 0, 0]
    assert odd.labels[0].text == "not a time"


def test_ranges_are_whole_buckets_ending_with_the_current_one() -> None:
    from datetime import UTC, datetime

    from spine_console.routes.usage import span

    now = datetime(2026, 12, 7, 20, 16, 30, tzinfo=UTC)
    assert span("24h", now) == {
        "from": "2026-12-06T21:00:00+00:00",
        "to": now.isoformat(),
        "bucket": "hour",
    }
    assert span("7d", now)["from"] == "2026-12-01T00:00:00+00:00"
    assert span("30d", now) == {
        "from": "2026-11-08T00:00:00+00:00",
        "to": now.isoformat(),
        "bucket": "day",
    }


def _cells(html: str, row_name: str) -> list[str]:
    """The data cells of the table row headed ``row_name``."""
    row = html.split(f'<th scope="row">{row_name}</th>', 1)[1].split("</tr>", 1)[0]
    return re.findall(r"<td>([^<]*)</td>", row)


def test_the_page_shows_tokens_per_bucket_in_totals_and_for_the_user() -> None:
    from spine_console.pages import templates
    from spine_console.routes.usage import page_context

    buckets = _hours([(1, 1, 0), (0, 0, 0)])
    buckets[0] |= {"input_tokens": 1200, "output_tokens": 340, "tokens": 1540}
    buckets[1] |= {"input_tokens": 0, "output_tokens": 0, "tokens": 0}
    totals = {"started": 1, "completed": 1, "failed": 0, "cancelled": 0, "credits": 2}
    series = {
        "bucket": "hour",
        "buckets": buckets,
        "totals": totals | {"input_tokens": 1200, "output_tokens": 340, "tokens": 1540},
    }
    usage = {"credits_used_last_24h": 2, "requests_last_24h": 3, "errors_last_24h": 0}
    me = {"balance": 8, "usage": usage, "tokens": {"input": 5000, "output": 700}}
    context = page_context(series, me, "24h", "hour")
    assert [b.value for b in context["tokens"].bars] == [1200, 340, 0, 0]

    page = templates.env.get_template("usage/page.html")
    html = page.render(session=None, path="/usage", **context)
    assert '<th scope="col">Input tokens</th><th scope="col">Output tokens</th>' in html
    assert _cells(html, "2026-12-07 00:00") == ["1", "1", "0", "0", "2", "1200", "340"]
    assert _cells(html, "2026-12-07 01:00")[-2:] == ["0", "0"]
    assert "<dt>Input tokens</dt><dd>1200</dd>" in html
    assert '<dd id="tokens">5000 in, 700 out</dd>' in html
    assert "Input tokens 2026-12-07 00:00: 1200" in html  # the chart's bar titles

    # the admin's view (no /users/me), and a gateway that does not send tokens yet
    old = {"bucket": "hour", "buckets": _hours([(1, 1, 0)]), "totals": totals}
    html = page.render(session=None, path="/usage", **page_context(old, None, "24h", "hour"))
    assert _cells(html, "2026-12-07 00:00")[-2:] == ["0", "0"]
    assert 'id="tokens"' not in html
