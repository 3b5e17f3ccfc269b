"""Idempotency-Key on cancel and input: the first answer for every repeat, concurrent ones
included (a fake of the Redis port with the same SET NX semantics; no I/O)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from spine_gateway.errors import Conflict, InvalidInput, NotFound, Unavailable
from spine_gateway.service import GatewayService
from spine_gateway.settings import GatewaySettings


class FakeStore:
    """The idempotency half of ``RedisStore``, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    async def reserve_idempotent(self, user_id: str, key: str, token: str, ttl_s: int) -> bool:
        await asyncio.sleep(0)  # a round trip: lets concurrent requests interleave
        name = f"{user_id}:{key}"
        if name in self.data:
            return False
        self.data[name] = token
        return True

    async def get_idempotent(self, user_id: str, key: str) -> str | None:
        await asyncio.sleep(0)
        return self.data.get(f"{user_id}:{key}")

    async def release_idempotent(self, user_id: str, key: str, token: str) -> None:
        if self.data.get(f"{user_id}:{key}") == token:
            del self.data[f"{user_id}:{key}"]

    async def put_idempotent(self, user_id: str, key: str, value: str, ttl_s: int) -> None:
        self.data[f"{user_id}:{key}"] = value


def _service(store: FakeStore) -> GatewayService:
    settings = GatewaySettings(
        API_KEY="x" * 20, SPINE_GATEWAY_REPLY_TIMEOUT=0.2, SPINE_GATEWAY_PROJECTION_TIMEOUT=0.2
    )
    unused: Any = None
    return GatewayService(
        settings,
        publisher=unused,
        replies=unused,
        read=unused,
        store=store,  # type: ignore[arg-type]
        projectors=unused,
        marks=unused,
        observers=unused,
    )


USER = {"user_id": "u1"}


async def test_concurrent_duplicates_run_once_and_share_the_first_answer() -> None:
    service = _service(FakeStore())
    runs = 0
    release = asyncio.Event()

    async def run() -> dict[str, Any]:
        nonlocal runs
        runs += 1
        await release.wait()  # the duplicates arrive while the first is still working
        return {"status": "cancelled", "n": runs}

    tasks = [
        asyncio.create_task(service._idempotent(USER, "k", "cancel:e1", run)) for _ in range(5)
    ]
    await asyncio.sleep(0.05)
    release.set()
    answers = await asyncio.gather(*tasks)
    assert runs == 1
    assert answers == [{"status": "cancelled", "n": 1}] * 5


async def test_a_refusal_is_an_answer_too() -> None:
    service = _service(FakeStore())
    calls = 0

    async def run() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise Conflict("execution 'e1' is already completed", code="EXECUTION_TERMINAL")

    for _ in range(3):
        with pytest.raises(Conflict) as caught:
            await service._idempotent(USER, "k", "cancel:e1", run)
        assert caught.value.code == "EXECUTION_TERMINAL" and caught.value.status == 409
    assert calls == 1


async def test_a_5xx_or_a_crash_releases_the_key_for_a_retry() -> None:
    store = FakeStore()
    service = _service(store)
    outcomes: list[Any] = [Unavailable("auth is away"), RuntimeError("bug"), {"ok": True}]

    async def run() -> dict[str, Any]:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return dict(outcome)

    with pytest.raises(Unavailable):
        await service._idempotent(USER, "k", "input:e1", run)
    with pytest.raises(RuntimeError):
        await service._idempotent(USER, "k", "input:e1", run)
    assert await service._idempotent(USER, "k", "input:e1", run) == {"ok": True}
    assert await service._idempotent(USER, "k", "input:e1", run) == {"ok": True}  # kept
    assert outcomes == []


async def test_keys_are_per_user_and_per_scope() -> None:
    service = _service(FakeStore())

    async def answer(value: str) -> dict[str, Any]:
        return {"v": value}

    assert await service._idempotent(USER, "k", "cancel:e1", lambda: answer("a")) == {"v": "a"}
    assert await service._idempotent(USER, "k", "input:e1", lambda: answer("b")) == {"v": "b"}
    other = {"user_id": "u2"}
    assert await service._idempotent(other, "k", "cancel:e1", lambda: answer("c")) == {"v": "c"}
    assert await service._idempotent(USER, None, "cancel:e1", lambda: answer("d")) == {"v": "d"}


async def test_a_key_still_in_use_past_the_wait_is_409(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    service = _service(store)
    store.data["u1:cancel:e1:k"] = "pending:someone-else"  # a request that never finishes
    monkeypatch.setattr(GatewayService, "_idempotency_wait_s", 0.1)
    with pytest.raises(Conflict) as caught:

        async def run() -> dict[str, Any]:
            raise AssertionError("must not run")

        await asyncio.wait_for(service._idempotent(USER, "k", "cancel:e1", run), 10)
    assert caught.value.code == "IDEMPOTENCY_KEY_IN_USE"


@pytest.mark.parametrize("error", [NotFound("no"), InvalidInput("bad")])
async def test_4xx_answers_replay_with_their_status(error: Exception) -> None:
    service = _service(FakeStore())

    async def run() -> dict[str, Any]:
        raise error

    for _ in range(2):
        with pytest.raises(type(error)):
            await service._idempotent(USER, "k", "cancel:e1", run)
