"""The executions list's filters: from the page's GET form to the gateway's query and back.

Pure (no I/O). The form's ``datetime-local`` inputs carry no zone; the browser's offset
comes along in a hidden ``tz`` field (filled by console.js; absent, the times are UTC), so
the gateway always gets UTC ISO instants. Everything else passes through unchanged: the
gateway validates it (its 422 is shown on the page), the console only shapes it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

#: the statuses the list can filter on (the gateway's ``EXECUTION_STATUSES``)
STATUSES: tuple[str, ...] = (
    "queued",
    "running",
    "waiting_input",
    "completed",
    "failed",
    "cancelled",
)
#: what an execution id may contain (the gateway's ``ID_PATTERN``)
ID_RE = re.compile(r"^[A-Za-z0-9_.:@\-]{1,128}$")
#: a feed cursor as the gateway writes it (``0:41,1:17``)
FEED_CURSOR_RE = re.compile(r"^[0-9:,]{1,512}$")
#: the widest zone offsets there are, in minutes (UTC-12 .. UTC+14)
_MAX_TZ = 14 * 60
_LOCAL_FORMATS = ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f")


class FilterError(ValueError):
    """A filter the form sent that cannot be a query (shown on the page, never a 500)."""


def local_to_utc(value: str, tz_offset_min: int = 0) -> str | None:
    """``2026-12-07T18:30`` typed where the clock is ``tz_offset_min`` minutes behind UTC
    (JavaScript's ``getTimezoneOffset()``: -60 in Madrid's winter) → UTC ISO 8601."""
    text = value.strip()
    if not text:
        return None
    for fmt in _LOCAL_FORMATS:
        try:
            local = datetime.strptime(text, fmt)
        except ValueError:
            continue
        break
    else:
        raise FilterError(f"{text!r} is not a date and time (YYYY-MM-DDTHH:MM)")
    try:
        instant = local + timedelta(minutes=tz_offset_min)
    except OverflowError as exc:
        raise FilterError(f"{text!r} is out of range") from exc
    return instant.replace(tzinfo=UTC).isoformat()


def parse_tz(value: str | None) -> int:
    """The form's ``tz`` field; anything that is not a real zone offset counts as UTC."""
    try:
        minutes = int(str(value or "0").strip())
    except ValueError:
        return 0
    return minutes if -_MAX_TZ <= minutes <= _MAX_TZ else 0


@dataclass(frozen=True)
class ListFilters:
    """What the list shows: the form's fields as typed (to fill the form again) plus the
    page's cursor."""

    statuses: tuple[str, ...] = ()
    flow_id: str = ""
    created_from: str = ""
    created_to: str = ""
    id_prefix: str = ""
    user_id: str = ""
    tz: int = 0
    cursor: str = ""

    @classmethod
    def of(cls, query: Mapping[str, Any] | Iterable[tuple[str, str]]) -> ListFilters:
        """From the request's query (repeated ``status`` allowed; unknown keys ignored)."""
        pairs = list(query.items()) if isinstance(query, Mapping) else list(query)
        statuses: list[str] = []
        single: dict[str, str] = {}
        for key, value in pairs:
            text = str(value)
            if key == "status":
                for part in text.split(","):
                    part = part.strip()
                    if part and part not in statuses:
                        statuses.append(part)
            elif key in ("flow_id", "created_from", "created_to", "id_prefix", "user_id"):
                single[key] = text.strip()[:500]
            elif key in ("tz", "cursor"):
                single[key] = text.strip()[:512]
        return cls(
            statuses=tuple(statuses[: len(STATUSES) + 2]),
            flow_id=single.get("flow_id", ""),
            created_from=single.get("created_from", ""),
            created_to=single.get("created_to", ""),
            id_prefix=single.get("id_prefix", ""),
            user_id=single.get("user_id", ""),
            tz=parse_tz(single.get("tz")),
            cursor=single.get("cursor", ""),
        )

    @property
    def active(self) -> bool:
        """Whether any filter (not the page) narrows the list."""
        return bool(
            self.statuses
            or self.flow_id
            or self.created_from
            or self.created_to
            or self.id_prefix
            or self.user_id
        )

    def gateway_params(self, limit: int, admin: bool = False) -> dict[str, Any]:
        """The gateway's query; :class:`FilterError` for times that are not times."""
        params: dict[str, Any] = {"limit": limit}
        if self.statuses:
            params["status"] = list(self.statuses)
        for name in ("flow_id", "id_prefix"):
            value = getattr(self, name)
            if value:
                params[name] = value
        if admin and self.user_id:
            params["user_id"] = self.user_id
        created_from = local_to_utc(self.created_from, self.tz)
        created_to = local_to_utc(self.created_to, self.tz)
        if created_from:
            params["created_from"] = created_from
        if created_to:
            params["created_to"] = created_to
        if self.cursor:
            params["cursor"] = self.cursor
        return params

    def query(self, *, cursor: str | None = None) -> str:
        """The filters as a URL query (for paging links and the live fragment), with
        ``cursor`` as the page (``None``: the first)."""
        pairs: list[tuple[str, str]] = [("status", s) for s in self.statuses]
        for name in ("flow_id", "created_from", "created_to", "id_prefix", "user_id"):
            value = getattr(self, name)
            if value:
                pairs.append((name, value))
        if self.tz and (self.created_from or self.created_to):
            pairs.append(("tz", str(self.tz)))
        if cursor:
            pairs.append(("cursor", cursor))
        return urlencode(pairs)


def clean_ids(values: Iterable[str], most: int) -> tuple[list[str], list[str]]:
    """The form's selected execution ids: ``(well-formed ones, malformed ones)``, each
    once, in the order given, at most ``most`` in all."""
    good: list[str] = []
    bad: list[str] = []
    seen: set[str] = set()
    for value in values:
        text = str(value).strip()
        if not text or text in seen:
            continue
        seen.add(text)
        if len(good) + len(bad) >= most:
            break
        (good if ID_RE.match(text) else bad).append(text)
    return good, bad


#: what happened to each execution a bulk cancel named
CANCEL_OUTCOMES = {
    200: "cancelled",
    409: "already finished",
    404: "not found",
    422: "not found",
}


def cancel_outcome(status: int, message: str = "") -> str:
    """The gateway's answer to one cancel, as the page says it."""
    known = CANCEL_OUTCOMES.get(status)
    if known is not None:
        return known
    return f"not cancelled ({status}{': ' + message if message else ''})"


def feed_cursor(value: str | None) -> str | None:
    """A ``Last-Event-ID`` the browser sends back: a feed cursor, or nothing."""
    if value and FEED_CURSOR_RE.match(value):
        return value
    return None
