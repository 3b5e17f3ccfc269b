"""Template filters: how values look on a page. They return plain strings, which the
templates' autoescape then escapes — none of them marks anything safe."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
from jinja2 import Environment

STATUS_CLASSES = {
    "completed": "ok",
    "succeeded": "ok",
    "active": "ok",
    "running": "run",
    "dispatched": "run",
    "waiting_input": "wait",
    "queued": "wait",
    "pending": "idle",
    "failed": "bad",
    "timed_out": "bad",
    "inactive": "bad",
    "cancelled": "off",
    "skipped": "off",
}


def pretty_json(value: Any) -> str:
    if value is None:
        return ""
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return str(value)


def instant(value: Any) -> datetime | None:
    """An ISO 8601 instant (UTC when it carries no offset), or ``None``."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def when(value: Any) -> str:
    """An ISO instant as ``2026-12-07 19:45:05 UTC``; anything else as it is."""
    parsed = instant(value)
    if parsed is None:
        return str(value) if value else ""
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(ms: Any) -> str:
    if ms is None or ms == "":
        return ""
    value = float(ms)
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.2f} s"
    return f"{value / 60_000:.1f} min"


def status_class(status: Any) -> str:
    return "st-" + STATUS_CLASSES.get(str(status or ""), "idle")


def dom_id(value: Any) -> str:
    """A node id as an element id any CSS selector takes (node ids may hold ``.``/``:``/``@``,
    which htmx's out-of-band targets would read as selector syntax)."""
    return hashlib.sha256(str(value).encode()).hexdigest()[:16]


def install(env: Environment) -> None:
    env.filters["dom_id"] = dom_id
    env.filters["pretty_json"] = pretty_json
    env.filters["when"] = when
    env.filters["duration"] = duration
    env.filters["status_class"] = status_class
