"""Serialisation: ``to_bytes`` writes orjson, ``parse`` returns the right class or raises.

Readers accept older versions: an upcaster registered for ``(type, version)`` turns the
body of that version into the next one, step by step, until the current version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydantic import ValidationError

from . import topics
from .envelope import Message
from .errors import InvalidMessage, UndecodableMessage, UnknownMessageType, UnsupportedVersion

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

MESSAGE_TYPES: dict[str, type[Message]] = {}
for _spec in topics.ALL:
    for _cls in _spec.messages:
        MESSAGE_TYPES[_cls.model_fields["type"].default] = _cls

_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register_upcaster(message_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register how the body of ``message_type`` at ``from_version`` becomes the next version."""

    def decorator(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(message_type, from_version)] = fn
        return fn

    return decorator


def to_bytes(message: Message) -> bytes:
    return orjson.dumps(message.model_dump(mode="json"))


def parse(raw: bytes | bytearray | memoryview | str) -> Message:
    """Decode one message; raise a :class:`~spine_contracts.errors.ContractError` subclass."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UndecodableMessage(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise UndecodableMessage(f"expected a JSON object, got {type(obj).__name__}")
    message_type = obj.get("type")
    if not isinstance(message_type, str) or message_type not in MESSAGE_TYPES:
        raise UnknownMessageType(f"unknown message type {message_type!r}")
    cls = MESSAGE_TYPES[message_type]
    version = obj.get("version", 1)
    if not isinstance(version, int) or version < 1:
        raise InvalidMessage(f"{message_type}: version must be a positive integer")
    if version > cls.VERSION:
        raise UnsupportedVersion(
            f"{message_type}: version {version} is newer than this reader's {cls.VERSION}"
        )
    while version < cls.VERSION:
        upcast = _UPCASTERS.get((message_type, version))
        if upcast is None:
            raise UnsupportedVersion(f"{message_type}: no upcaster from version {version}")
        obj = {**obj, "data": upcast(dict(obj.get("data") or {})), "version": version + 1}
        version += 1
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        raise InvalidMessage(f"{message_type}: {exc}") from exc


def parse_as(raw: bytes, expected: type[Message] | tuple[type[Message], ...]) -> Message:
    """``parse`` and check the class, for topics that carry only some messages."""
    message = parse(raw)
    if not isinstance(message, expected):
        raise InvalidMessage(f"unexpected message type {message.type!r} here")
    return message
