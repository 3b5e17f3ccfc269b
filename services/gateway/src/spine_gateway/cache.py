"""Read-model rows every request reads (the user behind a key, the flow to run), kept in
memory and dropped by their projection once it has committed a change to them.

Only facts that change through a few events are cached: a key and its account (any key
event of the account — created, rotated, revoked — or ``UserCreated`` drops every cached key
of that account; the balance is not read from here) and a flow (``FlowDefined``,
``FlowDeleted``). A load that raced a change is not kept: every drop moves a generation,
and a row read before the drop cannot be stored after it. Misses are never cached, so a new
key or flow works as soon as its projection has it. Pure: the loads are passed in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from spine_contracts import (
    FlowDefined,
    FlowDeleted,
    KeyCreated,
    KeyRevoked,
    KeyRotated,
    Message,
    UserCreated,
)
from spine_servicekit.projector import BatchHook, Incoming

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ReadCache(Generic[K, V]):
    def __init__(self, limit: int = 10_000) -> None:
        self._values: dict[K, V] = {}
        self._generation = 0
        self._limit = limit
        self.hits = 0
        self.loads = 0

    async def get(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        found = self._values.get(key)
        if found is not None:
            self.hits += 1
            return found
        generation = self._generation
        value = await load()
        self.loads += 1
        if value is not None and generation == self._generation:
            if len(self._values) >= self._limit:  # bounded: the oldest half goes
                for old in list(self._values)[: self._limit // 2]:
                    del self._values[old]
            self._values[key] = value
        return value

    def drop(self, matches: Callable[[K, V], bool]) -> None:
        """Forget the entries ``matches`` names (called after the change is committed)."""
        self._generation += 1
        for key in [k for k, v in self._values.items() if matches(k, v)]:
            del self._values[key]

    def __len__(self) -> int:
        return len(self._values)


def _dropper(
    cache: ReadCache[K, V],
    kinds: tuple[type[Message], ...],
    field: str,
    changed: Callable[[K, V, set[str]], bool],
) -> BatchHook:
    """An after-commit hook: the ``field`` of every ``kinds`` event names what changed."""

    def on_applied(batch: Sequence[Incoming]) -> None:
        ids = {
            getattr(item.message.data, field) for item in batch if isinstance(item.message, kinds)
        }
        if ids:
            cache.drop(lambda key, value: changed(key, value, ids))

    return on_applied


class HasUserId(Protocol):
    @property
    def user_id(self) -> str: ...


C = TypeVar("C", bound=HasUserId)


def drop_changed_credentials(cache: ReadCache[str, C]) -> BatchHook:
    """The users projector's hook: a rotated or revoked key stops working here at once."""
    return _dropper(
        cache,
        (KeyRotated, KeyCreated, KeyRevoked, UserCreated),
        "user_id",
        lambda _key, cred, ids: cred.user_id in ids,
    )


def drop_changed_flows(cache: ReadCache[str, Any]) -> BatchHook:
    """The flows projector's hook: the next execution runs the new definition."""
    return _dropper(cache, (FlowDefined, FlowDeleted), "flow_id", lambda key, _v, ids: key in ids)
