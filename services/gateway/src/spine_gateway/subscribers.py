"""Queues of the streams that watch each execution, for the live trail and for progress:
a stream subscribes for as long as it is open, and an execution nobody watches costs
nothing (its key is dropped with its last queue)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class Subscribers(Generic[T]):
    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[T]]] = {}

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._queues

    def of(self, execution_id: str) -> Iterable[asyncio.Queue[T]]:
        return self._queues.get(execution_id, ())

    def count(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @contextmanager
    def subscribe(self, execution_id: str, maxsize: int = 0) -> Iterator[asyncio.Queue[T]]:
        queue: asyncio.Queue[T] = asyncio.Queue(maxsize=maxsize)
        self._queues.setdefault(execution_id, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._queues.get(execution_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._queues[execution_id]
