"""``Idempotency-Key``: one mechanism for every route that takes one (execute, input, cancel).

Per (user, route scope, key) Redis holds an operation id, the request's fingerprint, a state
and, once there is one, the first answer:

* the first request claims the key and acts, with the operation id (execute uses it as the
  execution id, so a retry after a 503 reaches the same reservation and never charges twice);
* a repeat with the same body gets the first answer — 200 or the error below 500 it was
  (429 and 5xx are not answers: they leave the key open and a retry acts again, with the
  same operation id);
* a repeat with another body is refused, ``422 IDEMPOTENCY_KEY_REUSED`` (as payment APIs do);
* a repeat while the first is still acting waits for its answer: it subscribes to the key's
  channel, which the first request's outcome is published on, and re-reads the key at least
  every second (a lapsed claim of a gateway that crashed is taken over); after the wait it
  gets ``409 IDEMPOTENCY_KEY_IN_USE``.

Two tenants using the same key are two keys: the user id is part of every name.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from .adapters.redis import RedisStore
from .errors import Conflict, GatewayError, InvalidInput, replayed

Act = Callable[[str], Awaitable[dict[str, Any]]]


def fingerprint(body: Any) -> str:
    """The request as the key remembers it: a hash of its canonical JSON."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Idempotency:
    def __init__(self, store: RedisStore, *, ttl_s: int, wait_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s  # how long a key and its answer are kept
        self.wait_s = wait_s  # how long a repeat waits for the first request

    async def run(
        self, user_id: str, scope: str, key: str | None, body: Any, act: Act
    ) -> tuple[dict[str, Any], bool]:
        """``act(operation_id)``'s answer, or the stored first one; and whether it was a
        replay. Without a key, ``act`` runs with a fresh operation id."""
        if not key:
            return await act(str(uuid.uuid4())), False
        name, channel = self.store.idem_names(user_id, scope, key)
        token = uuid.uuid4().hex
        fp = fingerprint(body)
        claim = (name, token, str(uuid.uuid4()), fp, int(self.wait_s) + 30, self.ttl_s)
        verdict, value = await self.store.idem_claim(*claim)
        if verdict == "wait":
            verdict, value = await self._await_first(channel, claim)
        if verdict == "reused":
            raise InvalidInput(
                "this Idempotency-Key was used with a different request; use a new key",
                code="IDEMPOTENCY_KEY_REUSED",
            )
        if verdict == "done":
            return _replay(value), True
        return await self._act(name, channel, token, value, act), False

    async def _await_first(
        self, channel: str, claim: tuple[str, str, str, str, int, int]
    ) -> tuple[str, str]:
        deadline = time.monotonic() + self.wait_s
        pubsub = self.store.subscribe()
        try:
            await pubsub.subscribe(channel)
            while True:  # subscribed first, then read: a settlement in between is not missed
                verdict, value = await self.store.idem_claim(*claim)
                if verdict != "wait":
                    return verdict, value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Conflict(
                        "a request with this Idempotency-Key is still in progress",
                        code="IDEMPOTENCY_KEY_IN_USE",
                    )
                await pubsub.get_message(timeout=min(left, 1.0))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped

    async def _act(self, name: str, channel: str, token: str, op: str, act: Act) -> dict[str, Any]:
        answer: dict[str, Any] | None = None
        try:
            result = await act(op)
            answer = {"status": 200, "body": result}
            return result
        except GatewayError as exc:
            if exc.status < 500 and exc.status != 429:
                answer = {
                    "status": exc.status,
                    "code": exc.code,
                    "message": exc.message,
                    "extra": exc.extra,
                }
            raise
        finally:  # a 5xx, a 429 or a crash leaves the key open for a retry
            stored = orjson.dumps(answer).decode() if answer is not None else None
            await self.store.idem_settle(name, channel, token, stored, self.ttl_s)


def _replay(stored: str) -> dict[str, Any]:
    answer = orjson.loads(stored)
    if answer.get("status") == 200:
        body: dict[str, Any] = answer["body"]
        return body
    raise replayed(
        int(answer["status"]), str(answer["code"]), str(answer["message"]), answer["extra"]
    )
