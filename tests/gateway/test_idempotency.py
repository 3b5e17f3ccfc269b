"""Idempotency-Key (execute, cancel, input), against the real Redis: the first answer for
every repeat (concurrent ones too, across two gateway replicas' replicas), another body under
the same key refused, a 5xx or a crash leaving the key open for a retry with the same
operation id, and one key of two tenants staying two requests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from spine_gateway.adapters.redis import RedisStore
from spine_gateway.errors import Conflict, InvalidInput, NotFound, Unavailable
from spine_gateway.idempotency import Idempotency

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def idem(store: RedisStore, wait_s: float = 5.0) -> Idempotency:
    return Idempotency(store, ttl_s=600, wait_s=wait_s)


async def test_concurrent_duplicates_on_two_replicas_run_once_and_share_the_answer(
    replicas: tuple[RedisStore, RedisStore],
) -> None:
    runs: list[str] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def act(op: str) -> dict[str, Any]:
        runs.append(op)
        started.set()
        await release.wait()  # the duplicates arrive while the first is still working
        return {"status": "cancelled", "op": op}

    gateways = [idem(replicas[i % 2]) for i in range(6)]
    tasks = [
        asyncio.create_task(r.run("u1", "cancel:e1", "k", {"reason": None}, act)) for r in gateways
    ]
    await started.wait()  # the first claim acts; the others wait on the key's channel
    for _ in range(20):  # let the duplicates reach Redis and find the key taken
        await asyncio.sleep(0)
    release.set()
    answers = await asyncio.gather(*tasks)
    assert len(runs) == 1
    assert [a for a, _ in answers] == [{"status": "cancelled", "op": runs[0]}] * 6
    assert sorted(replay for _, replay in answers) == [False] + [True] * 5


async def test_a_refusal_is_an_answer_too(replicas: tuple[RedisStore, RedisStore]) -> None:
    calls = 0

    async def act(_op: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        raise Conflict("execution 'e1' is already completed", code="EXECUTION_TERMINAL")

    for store in (*replicas, replicas[0]):
        with pytest.raises(Conflict) as caught:
            await idem(store).run("u1", "cancel:e1", "k", {}, act)
        assert caught.value.code == "EXECUTION_TERMINAL" and caught.value.status == 409
    assert calls == 1


@pytest.mark.parametrize("error", [NotFound("no"), InvalidInput("bad")])
async def test_4xx_answers_replay_with_their_status(
    replicas: tuple[RedisStore, RedisStore], error: Exception
) -> None:
    async def act(_op: str) -> dict[str, Any]:
        raise error

    for store in replicas:
        with pytest.raises(type(error)):
            await idem(store).run("u1", "input:e1", "k", {}, act)


async def test_a_5xx_or_a_crash_leaves_the_key_open_with_the_same_operation_id(
    replicas: tuple[RedisStore, RedisStore],
) -> None:
    outcomes: list[Any] = [Unavailable("auth is away"), RuntimeError("bug"), {"ok": True}]
    ops: list[str] = []

    async def act(op: str) -> dict[str, Any]:
        ops.append(op)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return dict(outcome)

    store = replicas[0]
    with pytest.raises(Unavailable):
        await idem(store).run("u1", "execute", "k", {"a": 1}, act)
    with pytest.raises(RuntimeError):
        await idem(replicas[1]).run("u1", "execute", "k", {"a": 1}, act)
    assert await idem(store).run("u1", "execute", "k", {"a": 1}, act) == ({"ok": True}, False)
    assert await idem(store).run("u1", "execute", "k", {"a": 1}, act) == ({"ok": True}, True)
    assert outcomes == [] and len(set(ops)) == 1  # every retry acted as the same operation


async def test_the_same_key_with_another_body_is_refused(
    replicas: tuple[RedisStore, RedisStore],
) -> None:
    async def act(op: str) -> dict[str, Any]:
        return {"execution_id": op}

    first, _ = await idem(replicas[0]).run("u1", "execute", "k", {"flow_id": "a", "x": 1}, act)
    again, replay = await idem(replicas[1]).run("u1", "execute", "k", {"x": 1, "flow_id": "a"}, act)
    assert replay and again == first  # key order does not make another body
    with pytest.raises(InvalidInput) as caught:
        await idem(replicas[0]).run("u1", "execute", "k", {"flow_id": "b", "x": 1}, act)
    assert caught.value.code == "IDEMPOTENCY_KEY_REUSED" and caught.value.status == 422


async def test_keys_are_per_tenant_and_per_scope(replicas: tuple[RedisStore, RedisStore]) -> None:
    async def act(op: str) -> dict[str, Any]:
        return {"op": op}

    store = replicas[0]
    a, _ = await idem(store).run("u1", "execute", "k", {}, act)
    b, replay_b = await idem(store).run("u2", "execute", "k", {}, act)  # another tenant
    c, _ = await idem(store).run("u1", "cancel:e1", "k", {}, act)  # another route
    d, _ = await idem(store).run("u1", "execute", None, {}, act)  # no key: always acts
    assert not replay_b and len({a["op"], b["op"], c["op"], d["op"]}) == 4


async def test_a_key_still_in_use_past_the_wait_is_409(
    replicas: tuple[RedisStore, RedisStore],
) -> None:
    started = asyncio.Event()

    async def never(_op: str) -> dict[str, Any]:
        started.set()
        await asyncio.Event().wait()  # a request that never finishes
        raise AssertionError

    holder = asyncio.create_task(idem(replicas[0]).run("u1", "cancel:e2", "k", {}, never))
    await started.wait()

    async def act(_op: str) -> dict[str, Any]:
        raise AssertionError("must not run")

    with pytest.raises(Conflict) as caught:
        await idem(replicas[1], wait_s=0.3).run("u1", "cancel:e2", "k", {}, act)
    assert caught.value.code == "IDEMPOTENCY_KEY_IN_USE"
    holder.cancel()  # the holder goes away: the key is open again, a retry acts
    with pytest.raises(asyncio.CancelledError):
        await holder

    async def finally_acts(op: str) -> dict[str, Any]:
        return {"op": op}

    answer, replay = await idem(replicas[1]).run("u1", "cancel:e2", "k", {}, finally_acts)
    assert not replay and "op" in answer
