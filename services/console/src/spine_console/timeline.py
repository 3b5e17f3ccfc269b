"""An execution's timeline: one bar per node, from its start to its end, on one time axis
that begins when the execution was created.

Pure: it returns numbers and the gateway's strings; ``templates/executions/_timeline.html``
draws them as SVG (rects with ``x``/``width`` attributes: the CSP allows no inline style)
and escapes every string."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .filters import instant

LABEL_W = 140
PLOT_W = 560
ROW_H = 24
BAR_H = 14
AXIS_H = 22
TICKS = 4


@dataclass(frozen=True)
class Bar:
    node_id: str
    status: str
    y: int
    #: ``None``: the node has not started (a row without a bar)
    x: float | None
    width: float
    start_ms: float | None
    duration_ms: float | None
    #: still running: the bar ends at "now"
    open: bool


@dataclass(frozen=True)
class Tick:
    x: float
    ms: float


@dataclass(frozen=True)
class Timeline:
    width: int
    height: int
    span_ms: float
    bars: list[Bar]
    ticks: list[Tick]
    label_w: int = LABEL_W
    plot_w: int = PLOT_W
    bar_h: int = BAR_H
    axis_y: int = 0


def _ms(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000.0


def build(
    execution: Mapping[str, Any],
    nodes: Mapping[str, Mapping[str, Any]] | None,
    now: datetime,
) -> Timeline | None:
    """The timeline of ``execution`` (a ``GET /executions/{id}`` answer) at ``now``;
    ``None`` when no node has started."""
    nodes = nodes or {}
    starts = {nid: instant(n.get("started_at")) for nid, n in nodes.items()}
    started = [s for s in starts.values() if s is not None]
    if not started:
        return None
    origin = instant(execution.get("created_at")) or min(started)
    origin = min(origin, *started)
    ended = instant(execution.get("completed_at"))
    # a node without an end runs until now — or, once the execution ended, until then
    open_end = ended or now
    spans: list[tuple[str, str, float | None, float | None, bool]] = []
    for nid, node in nodes.items():
        start = starts[nid]
        status = str(node.get("status") or "pending")
        if start is None:
            spans.append((nid, status, None, None, False))
            continue
        end = instant(node.get("completed_at"))
        still = end is None
        stop = max(end or open_end, start)
        spans.append((nid, status, _ms(start, origin), _ms(stop, start), still))
    span_ms = max([1.0] + [s + d for _, _, s, d, _ in spans if s is not None and d is not None])
    scale = PLOT_W / span_ms
    bars: list[Bar] = []
    for row, (nid, status, start_ms, dur_ms, still) in enumerate(spans):
        y = AXIS_H + row * ROW_H
        if start_ms is None or dur_ms is None:
            bars.append(Bar(nid, status, y, None, 0.0, None, None, False))
            continue
        x = LABEL_W + start_ms * scale
        width = max(dur_ms * scale, 2.0)  # an instant still shows
        width = min(width, LABEL_W + PLOT_W - x) if x < LABEL_W + PLOT_W else 2.0
        bars.append(Bar(nid, status, y, round(x, 2), round(width, 2), start_ms, dur_ms, still))
    ticks = [
        Tick(round(LABEL_W + i * PLOT_W / TICKS, 2), span_ms * i / TICKS) for i in range(TICKS + 1)
    ]
    return Timeline(
        width=LABEL_W + PLOT_W + 40,
        height=AXIS_H + len(bars) * ROW_H + 6,
        span_ms=span_ms,
        bars=bars,
        ticks=ticks,
        axis_y=AXIS_H - 8,
    )


def elapsed_ms(execution: Mapping[str, Any], now: datetime) -> float | None:
    """How long the execution has run: until it ended, or until ``now``."""
    start = instant(execution.get("created_at"))
    if start is None:
        return None
    end = instant(execution.get("completed_at")) or now
    return max(_ms(end, start), 0.0)
