"""Usage over time as bar-chart geometry: the gateway's buckets (``GET /usage``) in, bars,
axis ticks and labels out, for a server-rendered SVG (no chart script in the browser).

Pure: numbers and short strings; the template draws them (autoescaped)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from .filters import instant

WIDTH = 760
HEIGHT = 240
LEFT = 52  # room for the y axis' numbers
RIGHT = 12
TOP = 14
BOTTOM = 34  # room for the x axis' labels
MAX_X_LABELS = 12

#: the executions chart's series, in the order their bars stand in a bucket
EXECUTION_SERIES: tuple[tuple[str, str], ...] = (
    ("started", "Started"),
    ("completed", "Completed"),
    ("failed", "Failed"),
)
CREDIT_SERIES: tuple[tuple[str, str], ...] = (("credits", "Credits"),)
TOKEN_SERIES: tuple[tuple[str, str], ...] = (
    ("input_tokens", "Input tokens"),
    ("output_tokens", "Output tokens"),
)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str
    value: int
    title: str  # "Started 2026-12-07 14:00: 3" — the bar's accessible text


@dataclass(frozen=True)
class Tick:
    y: float
    text: str


@dataclass(frozen=True)
class Label:
    x: float
    text: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    bars: list[Bar]
    ticks: list[Tick]
    labels: list[Label]
    series: tuple[tuple[str, str], ...]
    max_value: int

    @property
    def bottom(self) -> int:
        return self.top + self.plot_height

    @property
    def right(self) -> int:
        return self.left + self.plot_width


def nice_max(value: float, steps: int = 4) -> int:
    """The axis' top: ``steps`` equal whole-number steps of 1, 2, 2.5 or 5 times a power of
    ten that reach ``value`` (counts: a tick never reads 0.25); at least ``steps``."""
    need = max(value / steps, 1)
    power = 10 ** math.floor(math.log10(need))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * power
        if step >= need and float(step).is_integer():
            return int(step * steps)
    return int(10 * power * steps)  # pragma: no cover - the loop always returns


def _utc(start: str, pattern: str) -> str:
    """``start`` (ISO) formatted in UTC; the raw text if it does not read."""
    parsed = instant(start)
    return parsed.astimezone(UTC).strftime(pattern) if parsed is not None else start


def bucket_label(start: str, bucket: str) -> str:
    """``14:00`` for an hour, ``12-07`` for a day (UTC); the raw text if it does not read."""
    return _utc(start, "%H:%M" if bucket == "hour" else "%m-%d")


def bucket_name(start: str, bucket: str) -> str:
    """The bucket in full, for titles and the table: ``2026-12-07 14:00`` or ``2026-12-07``."""
    return _utc(start, "%Y-%m-%d %H:%M" if bucket == "hour" else "%Y-%m-%d")


def _count(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0


def bars(
    buckets: Sequence[Mapping[str, Any]],
    bucket: str,
    series: tuple[tuple[str, str], ...],
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    """Grouped bars: one group per bucket, one bar per series, heights to a shared scale;
    four y ticks (0 to :func:`nice_max`) and at most :data:`MAX_X_LABELS` x labels."""
    plot_w = width - LEFT - RIGHT
    plot_h = height - TOP - BOTTOM
    values = [[_count(b.get(name)) for name, _ in series] for b in buckets]
    top = nice_max(max((v for row in values for v in row), default=0))
    n = max(len(buckets), 1)
    slot = plot_w / n
    gap = min(slot * 0.2, 8.0)
    bar_w = max((slot - gap) / len(series), 0.5)
    out: list[Bar] = []
    labels: list[Label] = []
    every = max(math.ceil(len(buckets) / MAX_X_LABELS), 1)
    for i, (b, row) in enumerate(zip(buckets, values, strict=True)):
        start = str(b.get("start", ""))
        x0 = LEFT + i * slot + gap / 2
        for j, ((name, title), value) in enumerate(zip(series, row, strict=True)):
            h = plot_h * value / top
            out.append(
                Bar(
                    x=round(x0 + j * bar_w, 2),
                    y=round(TOP + plot_h - h, 2),
                    width=round(bar_w, 2),
                    height=round(h, 2),
                    series=name,
                    value=value,
                    title=f"{title} {bucket_name(start, bucket)}: {value}",
                )
            )
        if i % every == 0:
            labels.append(
                Label(x=round(LEFT + (i + 0.5) * slot, 2), text=bucket_label(start, bucket))
            )
    ticks = [
        Tick(y=round(TOP + plot_h - plot_h * k / 4, 2), text=_number(top * k / 4)) for k in range(5)
    ]
    return Chart(
        width=width,
        height=height,
        left=LEFT,
        top=TOP,
        plot_width=plot_w,
        plot_height=plot_h,
        bars=out,
        ticks=ticks,
        labels=labels,
        series=series,
        max_value=top,
    )


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"
