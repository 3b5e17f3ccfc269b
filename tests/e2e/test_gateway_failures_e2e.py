"""The gateway when the auth service does not answer: a dedicated small stack (auth and a
gateway with a short reply timeout), because the test stops its auth process.

``POST /flows/execute`` must answer 503 and publish ``WithdrawReservation`` after its
``ReserveCredits``, so that when auth comes back the reservation is refunded and the user,
whose client may retry the 503, never pays for it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from spine_contracts import (
    CreditsReserved,
    FlowDefined,
    FlowDefinition,
    KeyRotated,
    Message,
    ReservationWithdrawn,
    ReserveCredits,
    WithdrawReservation,
    topics,
)
from spine_flows import flow_version
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import KafkaConfig

from .test_gateway_e2e import Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FLOW = FlowDefinition.model_validate(
    {"flow_id": "one_echo", "nodes": [{"id": "a", "agent_id": "echo"}]}
)


class Seen:
    """Every message of a topic, awaited with a condition (never a sleep)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.changed = asyncio.Condition()

    async def apply(self, message: Message, _record: Any) -> None:
        async with self.changed:
            self.messages.append(message)
            self.changed.notify_all()

    def of(self, cls: type[Message], execution_id: str) -> list[Any]:
        return [
            m
            for m in self.messages
            if isinstance(m, cls) and getattr(m.data, "execution_id", None) == execution_id
        ]

    async def wait(self, cls: type[Message], execution_id: str, within: float = 60) -> Any:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(lambda: bool(self.of(cls, execution_id)))
        return self.of(cls, execution_id)[0]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(
        kafka,
        infra,
        topic_prefix,
        services=("auth", "gateway"),
        agents=(),
        flows=(),
        env={"SPINE_GATEWAY_REPLY_TIMEOUT": "1.5"},
    ) as client:
        assert client.stack is not None
        event = FlowDefined.build(
            flow_id=FLOW.flow_id, flow_version=flow_version(FLOW), definition=FLOW, source="api"
        )
        await client.stack.publish(topics.FLOWS, FLOW.flow_id, event)
        yield client


def rotations(seen: Seen) -> list[Any]:
    return [m for m in seen.messages if isinstance(m, KeyRotated)]


async def _follow(kafka: KafkaConfig, spec: topics.TopicSpec) -> tuple[Seen, TopicFollower]:
    seen = Seen()
    follower = TopicFollower(kafka, kafka.topic(spec), seen.apply, name=f"test-{spec.base}")
    await follower.start()
    return seen, follower


async def test_no_answer_from_auth_is_503_and_the_reservation_is_withdrawn(
    api: Api, kafka: KafkaConfig
) -> None:
    assert api.stack is not None
    user = await api.create_user(credits=3)
    h = api.auth(user["api_key"])
    async with asyncio.timeout(30):  # the flow published by the fixture reaches the gateway
        while True:
            r = await api.http.get(f"/api/v1/flows/{FLOW.flow_id}", headers=h)
            if r.status_code == 200:
                break
            await asyncio.sleep(0.1)
    commands, f1 = await _follow(kafka, topics.AUTH_COMMANDS)
    events, f2 = await _follow(kafka, topics.AUTH_EVENTS)
    try:
        auth = api.stack.procs["auth"]
        auth.send_signal(signal.SIGTERM)
        await auth.wait()

        r = await api.execute(user["api_key"], FLOW.flow_id, {"x": 1})
        assert r.status_code == 503, r.text
        body = r.json()
        assert (
            body["error_code"] == "SERVICE_UNAVAILABLE" and "nothing was charged" in body["message"]
        )
        eid = body["execution_id"]
        reserve = await commands.wait(ReserveCredits, eid)
        withdraw = await commands.wait(WithdrawReservation, eid)
        assert withdraw.data.user_id == user["user_id"]
        order = [m for m in commands.messages if m in (reserve, withdraw)]
        assert order == [reserve, withdraw]  # same partition (key user_id), reserve first
        # nothing was created, and other auth commands fail fast too (no half-done writes)
        assert (await api.http.get(f"/api/v1/executions/{eid}", headers=h)).status_code == 404
        r = await api.http.post("/api/v1/users/regenerate-key", headers=h)
        assert r.status_code == 503 and r.json()["error_code"] == "SERVICE_UNAVAILABLE"
        assert "current key stays valid" in r.json()["message"]
        assert (await api.http.get("/api/v1/users/me", headers=h)).status_code == 200

        # auth comes back: it reserves, then withdraws (refund + cancel): the user pays 0
        await api.stack.spawn("auth#again")
        await events.wait(CreditsReserved, eid)
        refund = await events.wait(ReservationWithdrawn, eid)
        assert refund.data.refunded == 1 and refund.data.balance == 3
        # the unconfirmed rotation was applied, then undone: the key in hand still works
        async with asyncio.timeout(60), events.changed:
            await events.changed.wait_for(lambda: len(rotations(events)) >= 2)
        new, back = rotations(events)
        assert back.data.key_hash == new.data.previous_key_hash
        async with asyncio.timeout(30):
            while True:  # the gateway's users projection follows the refund
                r = await api.http.get("/api/v1/users/me", headers=h)
                assert r.status_code == 200, r.text
                if r.json()["credits"] == 3:
                    break
                await asyncio.sleep(0.1)
        r = await api.execute(user["api_key"], FLOW.flow_id, {"x": 2})
        assert r.status_code == 200, r.text  # and the next request is served again
    finally:
        await f1.stop()
        await f2.stop()
