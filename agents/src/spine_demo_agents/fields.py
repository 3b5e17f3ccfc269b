"""Reading applicant fields from what people type: keys, numbers, ``key: value`` text.

Shared by zoe (who gathers the fields) and eddie (who scores them), so both read
``"Monthly income": "2,500 €"`` the same way.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

#: Other names people use for the canonical fields.
ALIASES: dict[str, str] = {
    "full_name": "name",
    "monthly_income": "income",
    "salary": "income",
    "loan_amount": "amount",
    "loan": "amount",
    "term": "term_months",
    "months": "term_months",
    "term_in_months": "term_months",
    "loan_term": "term_months",
    "monthly_debts": "debts",
    "debt": "debts",
}
MONEY_FIELDS = frozenset({"income", "amount", "debts"})
INT_FIELDS = frozenset({"term_months"})

_LINE = re.compile(r"^\s*([A-Za-z][\w \-]*?)\s*[:=]\s*(.*?)\s*$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_CURRENCY = re.compile(r"^[$€£]\s*|\s*([$€£]|[A-Z]{3})$")


def normalise_key(key: str) -> str:
    """``"Monthly income"`` → ``"income"``: lower case, ``_`` separators, aliases."""
    simple = re.sub(r"[\s\-]+", "_", key.strip().lower())
    return ALIASES.get(simple, simple)


def parse_number(text: str) -> int | float | None:
    """``"2,500"``, ``"$ 10000"``, ``"1e3"`` → a number; anything else → ``None``."""
    s = _CURRENCY.sub("", text.strip()).replace("_", "")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if not _NUMBER.match(s):
        return None
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    value = float(s)
    return value if math.isfinite(value) else None


def parse_value(text: str) -> Any:
    """A number when the text is one, else the trimmed text without surrounding quotes."""
    s = text.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1].strip()
    number = parse_number(s)
    return s if number is None else number


def parse_user_message(text: str) -> dict[str, Any]:
    """Fields in a free-text answer: a JSON object, or ``key: value`` / ``key=value``
    lines (also separated by ``;``). Keys are case-insensitive; numbers are parsed."""
    s = text.strip()
    if s.startswith("{"):
        try:
            obj = json.loads(s)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            return {normalise_key(str(k)): v for k, v in obj.items()}
    found: dict[str, Any] = {}
    for segment in re.split(r"[\n;]+", s):
        match = _LINE.match(segment)
        if match and match.group(2):
            found[normalise_key(match.group(1))] = parse_value(match.group(2))
    return found


def is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def fields_of(source: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of one input or user turn: its keys plus what its ``user_message`` says."""
    found: dict[str, Any] = {}
    for key, value in source.items():
        if key in ("user_message", "context", "previous_messages") or is_blank(value):
            continue
        found[normalise_key(str(key))] = value
    message = source.get("user_message")
    if isinstance(message, str):
        found.update({k: v for k, v in parse_user_message(message).items() if not is_blank(v)})
    return found


class FieldProblem(ValueError):
    """A value that is present but unusable, e.g. ``income: lots``."""


def coerce(name: str, value: Any) -> Any:
    """The typed value of one field, or :class:`FieldProblem` saying what is wrong."""
    if name in MONEY_FIELDS or name in INT_FIELDS:
        number: int | float | None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int | float):
            number = value if math.isfinite(value) else None
        elif isinstance(value, str):
            number = parse_number(value)
        else:
            number = None
        if number is None:
            raise FieldProblem(f"{name} must be a number, got {value!r}")
        if name in INT_FIELDS:
            if float(number) != int(number) or number < 1:
                raise FieldProblem(
                    f"{name} must be a whole number of months (1 or more), got {value!r}"
                )
            return int(number)
        if name == "debts":
            if number < 0:
                raise FieldProblem(f"debts cannot be negative, got {value!r}")
        elif number <= 0:
            raise FieldProblem(f"{name} must be greater than 0, got {value!r}")
        return float(number)
    if isinstance(value, str):
        return value.strip()
    return value
