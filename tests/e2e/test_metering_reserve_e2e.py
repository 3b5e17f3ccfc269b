"""Credits per token through the real processes (DESIGN §14): a priced flow reserves its
``max_credits`` with its price as the base (gateway → auth → orchestrator), completes
paying the base (echo reports no tokens), the rest refunded, and its detail shows the
usage; flow validation refuses a priced flow without ``max_credits`` and a node config
naming a model endpoint, by node and field."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from spine_servicekit.kafka import KafkaConfig

from .test_gateway_e2e import Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

STACK = ("registry", "orchestrator", "auth", "echo", "gateway")
PRICING = {"*": {"input": 1, "output": 2}}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(
        kafka, infra, topic_prefix, services=STACK, agents=("echo",), flows=("echo_chain",)
    ) as client:
        yield client


async def test_a_priced_flow_reserves_max_credits_and_pays_its_base(api: Api) -> None:
    key = (await api.create_user(credits=30))["api_key"]
    h = api.auth(key)
    flow_id = f"priced_{os.urandom(3).hex()}"
    flow = {
        "flow_id": flow_id,
        "cost": 3,
        "pricing": PRICING,
        "max_credits": 20,
        "nodes": [{"id": "a", "agent_id": "echo"}, {"id": "b", "agent_id": "echo"}],
    }
    r = await api.http.post("/api/v1/flows", json=flow, headers=h)
    assert r.status_code == 201, r.text
    r = await api.execute(key, flow_id, {"q": 1})
    assert r.status_code == 200, r.text
    eid = r.json()["execution_id"]
    events = await api.sse(key, eid)
    assert events[-1]["event"] == "execution.completed", events[-1]
    trail = (await api.http.get(f"/api/v1/executions/{eid}/events", headers=h)).json()
    started = next(e for e in trail["events"] if e["type"] == "execution.started")["data"]
    assert (started["credits_reserved"], started["base_credits"]) == (20, 3)

    detail = (await api.http.get(f"/api/v1/executions/{eid}", headers=h)).json()
    assert detail["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "token_credits": 0.0,
        "charge": 3,
        "charged": 3,
        "overshoot": 0,
        "untrusted": [],
    }
    # auth settles after the terminal event (the orchestrator's settle command), and the
    # users projection follows: no event of this API to await, so ask until it moved
    for _ in range(100):
        me = (await api.http.get("/api/v1/users/me", headers=h)).json()
        if me["credits"] != 10:  # 30 less the 20 held
            break
        await asyncio.sleep(0.1)
    assert me["credits"] == 27  # 3 charged, 17 refunded

    # an unpriced flow's detail has no usage, as before
    r = await api.execute(key, "echo_chain", {"q": 2})
    assert r.status_code == 200, r.text
    plain = r.json()["execution_id"]
    assert (await api.sse(key, plain))[-1]["event"] == "execution.completed"
    detail = (await api.http.get(f"/api/v1/executions/{plain}", headers=h)).json()
    assert detail["usage"] is None


async def test_flow_validation_refuses_unbounded_pricing_and_node_endpoints(api: Api) -> None:
    h = api.auth((await api.create_user(credits=5))["api_key"])
    unbounded = {
        "flow_id": "unbounded",
        "pricing": PRICING,
        "nodes": [{"id": "a", "agent_id": "echo"}],
    }
    endpoint = {
        "flow_id": "endpoint",
        "nodes": [{"id": "ask", "agent_id": "echo", "config": {"base_url": "http://10.1.1.1"}}],
    }
    for body, where in (
        (unbounded, "api: max_credits: missing: a flow with pricing must set max_credits"),
        (endpoint, "api: node 'ask': config.base_url: a node config may not set a model's"),
    ):
        r = await api.http.post("/api/v1/flows", json=body, headers=h)
        assert r.status_code == 422 and r.json()["error_code"] == "INVALID_FLOW", r.text
        (problem,) = r.json()["problems"]
        assert problem.startswith(where), problem
        assert "10.1.1.1" not in r.text
