"""Lists that scale: keyset cursors and the filters of ``GET /executions`` and ``GET /users``.

Pure (no I/O). A page is ordered newest first by ``(created_at, id)``, both descending; the
cursor is the position of the last row a page showed, so the next page starts right after it
however many rows arrived meanwhile (an offset would repeat or skip them) and costs an index
range scan however deep the client pages.

A cursor is opaque to clients: base64url (no padding) of ``<kind>:<epoch µs>:<id>``. The
kind keeps a users cursor from positioning an executions list; microseconds are what
PostgreSQL's ``timestamptz`` holds, so the position is exact.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from spine_contracts import TERMINAL_STATUSES

from .errors import InvalidInput

#: the statuses the read model stores (``pending`` is only ever an execute's answer)
EXECUTION_STATUSES: tuple[str, ...] = (
    "queued",
    "running",
    "waiting_input",
    *sorted(TERMINAL_STATUSES),
)
#: what an id prefix may contain: the characters of ids (``models.ID_PATTERN``)
ID_PREFIX_PATTERN = r"^[A-Za-z0-9_.:@\-]{1,128}$"
_ID = re.compile(ID_PREFIX_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the µs range of a ``datetime`` (years 1..9999): a cursor beyond it is malformed
_MIN_US = (datetime(1, 1, 2, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
_MAX_US = (datetime(9999, 12, 30, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
_MAX_CURSOR = 512

CursorKind = Literal["e", "u"]  # executions, users


@dataclass(frozen=True)
class PageKey:
    """Where a page ends: the last row's ``created_at`` and id."""

    created_at: datetime
    id: str


def encode_cursor(kind: CursorKind, created_at: datetime, row_id: str) -> str:
    if created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    raw = f"{kind}:{micros}:{row_id}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: CursorKind, cursor: str) -> PageKey:
    """The position a cursor names; 422 for anything this gateway did not hand out."""
    bad = InvalidInput("cursor is malformed: pass the next_cursor of a previous page as is")
    if not cursor or len(cursor) > _MAX_CURSOR:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise bad from exc
    # re-encoding must give the cursor back: no padding, no characters base64 ignores
    if base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii") != cursor:
        raise bad
    parts = raw.split(":", 2)
    if len(parts) != 3 or parts[0] != kind:
        raise bad
    _, micros_text, row_id = parts
    if not re.fullmatch(r"-?[0-9]{1,19}", micros_text) or not _ID.fullmatch(row_id):
        raise bad
    micros = int(micros_text)
    if not _MIN_US <= micros <= _MAX_US:
        raise bad
    return PageKey(_EPOCH + timedelta(microseconds=micros), row_id)


def parse_statuses(values: Iterable[str]) -> tuple[str, ...]:
    """``?status=a&status=b`` or ``?status=a,b``; an unknown status is 422 naming the known."""
    out: list[str] = []
    for value in values:
        for status in value.split(","):
            status = status.strip()
            if status not in EXECUTION_STATUSES:
                shown = status if len(status) <= 40 else status[:40] + "…"
                raise InvalidInput(
                    f"unknown status {shown!r}; allowed: {', '.join(EXECUTION_STATUSES)}",
                    extra={"allowed": list(EXECUTION_STATUSES)},
                )
            if status not in out:
                out.append(status)
    return tuple(out)


@dataclass(frozen=True)
class ExecutionFilter:
    """What ``GET /executions`` narrows to; ``user_id`` None: every tenant (the admin)."""

    user_id: str | None = None
    statuses: tuple[str, ...] = ()
    flow_id: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    id_prefix: str | None = None


def execution_filter(
    *,
    user_id: str | None,
    statuses: Iterable[str] = (),
    flow_id: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    id_prefix: str | None = None,
) -> ExecutionFilter:
    """A validated filter: known statuses, aware datetimes (naive ones are UTC) in order, an
    id prefix of id characters."""
    created_from = _aware(created_from)
    created_to = _aware(created_to)
    if created_from is not None and created_to is not None and created_from > created_to:
        raise InvalidInput("created_from must not be after created_to")
    if id_prefix is not None and not _ID.fullmatch(id_prefix):
        raise InvalidInput("id_prefix may contain only letters, digits and _ . : @ -")
    return ExecutionFilter(
        user_id=user_id,
        statuses=parse_statuses(statuses),
        flow_id=flow_id,
        created_from=created_from,
        created_to=created_to,
        id_prefix=id_prefix,
    )


def _aware(value: datetime | None) -> datetime | None:
    """In UTC (naive: taken as UTC); a time whose UTC instant no ``datetime`` holds (year 1
    at +01:00) is 422, not an overflow in the driver."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise InvalidInput(f"{value.isoformat()} is out of range") from exc
