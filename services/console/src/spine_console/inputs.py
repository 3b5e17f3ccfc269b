"""What a person types into the console's two input forms, as the gateway wants it: a flow's
``input_data`` (the run form) and the answer to a node waiting for input.

Pure (no I/O). Field values stay the strings typed (the agents read numbers from text, as
zoe and eddie do); typed values go in the run form's JSON box. Field names come from a
tenant's flow and an agent's question: the forms prefix them (``field.<name>``) so none can
collide with the form's own fields (``csrf``, ``node_id``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

FIELD_PREFIX = "field."
#: more fields than any real form; the rest of a forged post is ignored
MAX_FIELDS = 100
MAX_VALUE_CHARS = 10_000


class InputError(ValueError):
    """Input that cannot be sent (invalid JSON, not an object, nothing given)."""


def declared_fields(flow: Mapping[str, Any]) -> list[str]:
    """The fields a flow says it wants: its input nodes' ``config.required_fields``, in
    order, each once (``GET /flows/{id}`` has no input schema beyond these)."""
    found: list[str] = []
    for node in flow.get("nodes") or []:
        if not isinstance(node, Mapping) or node.get("type") != "input":
            continue
        config = node.get("config")
        wanted = config.get("required_fields") if isinstance(config, Mapping) else None
        for name in wanted if isinstance(wanted, list) else []:
            text = str(name)
            if text and text not in found and len(found) < MAX_FIELDS:
                found.append(text)
    return found


def form_fields(form: Iterable[tuple[str, Any]]) -> dict[str, str]:
    """The ``field.<name>`` entries of a posted form that hold something."""
    values: dict[str, str] = {}
    for key, value in form:
        if not key.startswith(FIELD_PREFIX) or not isinstance(value, str):
            continue
        name = key[len(FIELD_PREFIX) :]
        text = value.strip()
        if name and text and len(values) < MAX_FIELDS:
            values[name] = text[:MAX_VALUE_CHARS]
    return values


def run_input(fields: Mapping[str, str], json_text: str) -> dict[str, Any]:
    """A run's ``input_data``: the JSON box's object, then the fields over it."""
    data: dict[str, Any] = {}
    text = json_text.strip()
    if text:
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"The input is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise InputError('The input must be a JSON object, like {"text": "hi"}.')
        data.update(parsed)
    data.update(fields)
    return data


def answer_input(fields: Mapping[str, str], message: str) -> dict[str, Any]:
    """An answer to a waiting node: the fields filled in, and the free text as
    ``user_message`` (zoe reads ``key: value`` lines from it)."""
    data: dict[str, Any] = dict(fields)
    text = message.strip()
    if text:
        data["user_message"] = text[:MAX_VALUE_CHARS]
    if not data:
        raise InputError("Fill in at least one field, or write an answer.")
    return data


@dataclass(frozen=True)
class Question:
    """A node waiting for input, as its form shows it."""

    node_id: str
    question: str
    fields: list[str]
    turn: int | None
    expires_at: str | None


def questions(nodes: Mapping[str, Mapping[str, Any]] | None) -> list[Question]:
    """Every node of an execution's detail that waits for input, with what it asked."""
    asked: list[Question] = []
    for node_id, node in (nodes or {}).items():
        pending = node.get("pending_input")
        if node.get("status") != "waiting_input" or not isinstance(pending, Mapping):
            continue
        missing = pending.get("missing_fields")
        turn = pending.get("turn")
        asked.append(
            Question(
                node_id=str(node_id),
                question=str(pending.get("question") or ""),
                fields=[str(f) for f in missing][:MAX_FIELDS] if isinstance(missing, list) else [],
                turn=turn if isinstance(turn, int) else None,
                expires_at=str(pending["expires_at"]) if pending.get("expires_at") else None,
            )
        )
    return asked


def questions_key(asked: Iterable[Question]) -> str:
    """Names what the input form shows; a page re-renders its form only when it changes,
    so a refresh never wipes what someone is typing."""
    return "|".join(f"{q.node_id}:{q.turn}" for q in asked) or "-"
