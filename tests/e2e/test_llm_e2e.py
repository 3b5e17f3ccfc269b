"""Model-backed agents through the whole stack (issue 21): ``spine-agent-llm`` processes
(one on an OpenAI-compatible server, one on an Anthropic-compatible one) run priced flows
for a user; the real ``openai``/``anthropic`` clients talk to the local protocol servers of
``tests/agent_sdk/llm_servers.py`` (recorded answers, real streaming chunks, 429/500).

What is asserted is the policy of docs/credits.md, computed from what the agents reported:
a completed run pays its base price plus its tokens, a failed one its tokens, never past
the reservation (the rest recorded as overshoot), the balance never below zero — 50
concurrent executions on a balance that fits about 10 included. Tokens stream live on SSE
as ``execution.node_progress`` and never enter the trail.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import pytest_asyncio
from agent_sdk.llm_servers import Fail, FakeModelServer, Text
from spine_contracts.messages.executions import TERMINAL_STATUSES
from spine_contracts.metering import TokenPrice, TokenUsage, credits_for, whole_credits
from spine_servicekit.kafka import KafkaConfig

from .test_gateway_e2e import MASTER, Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

MODEL = "fake-gpt"
CLAUDE = "fake-claude"
PRICE = TokenPrice(input=40, output=100)  # credits per 1,000 tokens
PRICING = {"*": PRICE.model_dump()}
#: the operator's least price of tokens in tenants' own flows (below PRICE, so the flows
#: priced with PRICE are unchanged by it)
FLOOR_PRICE = TokenPrice(input=10, output=20)
TENANT_FLOOR = {"*": FLOOR_PRICE.model_dump()}
ANSWER = (
    "Spine runs agents as a durable graph over Kafka, charges credits per token, and "
    "streams what a model writes while it writes it, so nobody waits for a blank page."
)


class Stacked:
    """The stack and the two model servers behind its two model agents."""

    def __init__(self, api: Api, openai: FakeModelServer, anthropic: FakeModelServer) -> None:
        self.api = api
        self.openai = openai
        self.anthropic = anthropic


def _llm_env(server: FakeModelServer, agent_id: str, model: str) -> dict[str, str]:
    return {
        "SPINE_LLM_PROVIDER": server.kind,
        "SPINE_LLM_BASE_URL": server.base_url,
        "SPINE_LLM_API_KEY": "sk-test-not-a-real-key-0001",
        "SPINE_LLM_MODEL": model,
        "SPINE_LLM_AGENT_ID": agent_id,
    }


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stacked(
    kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str
) -> AsyncIterator[Stacked]:
    openai, anthropic = FakeModelServer("openai"), FakeModelServer("anthropic")
    await openai.start()
    await anthropic.start()
    try:
        async with gateway_stack(
            kafka,
            infra,
            topic_prefix,
            services=("registry", "orchestrator", "auth", "gateway"),
            agents=(),
            flows=(),
            env={"SPINE_TENANT_TOKEN_PRICING": orjson.dumps(TENANT_FLOOR).decode()},
        ) as api:
            assert api.stack is not None
            await api.stack.spawn("llm", _llm_env(openai, "llm", MODEL))
            await api.stack.spawn("llm-claude", _llm_env(anthropic, "llm-claude", CLAUDE))
            await api.stack.agents_active("llm", "llm-claude")
            yield Stacked(api, openai, anthropic)
    finally:
        await openai.stop()
        await anthropic.stop()


async def define(
    api: Api, flow_id: str, agent: str, prompt: str, key: str = MASTER, **flow: Any
) -> None:
    """A flow with one model node and an output: a system flow (the operator prices it),
    or with a user's ``key`` that user's own."""
    body = {
        "flow_id": flow_id,
        "nodes": [
            {
                "id": "write",
                "agent_id": agent,
                "config": {
                    "system": "You answer briefly.",
                    "prompt": prompt + "{{ input.topic }}",
                    "max_tokens": 400,
                    "timeout": 60,
                },
            },
            {"id": "out", "type": "output", "depends_on": ["write"]},
        ],
        **flow,
    }
    r = await api.http.post("/api/v1/flows", json=body, headers=api.auth(key))
    assert r.status_code in (200, 201), r.text


async def eventually(
    get: Callable[[], Awaitable[dict[str, Any]]], done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """``get()`` once ``done`` says so, or the last answer after 20 s: the read models
    follow the events (the settle comes after the terminal event) and the API has no
    event to await for them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        value = await get()
        if done(value) or loop.time() > deadline:
            return value
        await asyncio.sleep(0.1)


async def run(api: Api, key: str, flow_id: str, topic: str) -> dict[str, Any]:
    r = await api.execute(key, flow_id, {"topic": topic})
    assert r.status_code == 200, r.text
    return await follow(api, key, r.json()["execution_id"])


async def follow(api: Api, key: str, eid: str) -> dict[str, Any]:
    """The execution's SSE events to its end, and its detail once that shows the end."""
    events = await api.sse(key, eid)

    async def detail() -> dict[str, Any]:
        got = await api.http.get(f"/api/v1/executions/{eid}", headers=api.auth(key))
        assert got.status_code == 200, got.text
        return dict(got.json())

    shown = await eventually(detail, lambda d: d["status"] in TERMINAL_STATUSES)
    return {"id": eid, "events": events, "detail": shown}


async def me(api: Api, key: str, credits: int | None = None) -> dict[str, Any]:
    """The caller's account; with ``credits``, once the balance shows them (settled)."""

    async def get() -> dict[str, Any]:
        r = await api.http.get("/api/v1/users/me", headers=api.auth(key))
        assert r.status_code == 200, r.text
        return dict(r.json())

    return await eventually(get, lambda m: credits is None or m["credits"] == credits)


def expected_charge(base: int, *usages: TokenUsage) -> int:
    return base + whole_credits(sum(credits_for({"*": PRICE}, u) for u in usages))


def body(event: dict[str, Any]) -> dict[str, Any]:
    """A trail event's own data (the SSE ``data`` is its view: seq, type, data, time)."""
    return dict(event["data"]["data"])


def of_type(result: dict[str, Any], event: str) -> dict[str, Any]:
    """The run's first event of that type (live progress may come before any trail event)."""
    return next(e for e in result["events"] if e["event"] == event)


def node_usage(result: dict[str, Any]) -> TokenUsage:
    (completed,) = [e for e in result["events"] if e["event"] == "execution.node_completed"
                    and body(e)["node_id"] == "write"]  # fmt: skip
    return TokenUsage.model_validate(body(completed)["output"]["usage"])


async def test_a_priced_model_flow_streams_and_pays_base_plus_tokens(stacked: Stacked) -> None:
    api, server = stacked.api, stacked.openai
    prompt = "Explain in one sentence: "
    server.script(prompt + "spine", Text(ANSWER, delay=0.02))
    await define(api, "llm_priced", "llm", prompt, cost=1, max_credits=20, pricing=PRICING)
    user = await api.create_user(credits=50)

    result = await run(api, user["api_key"], "llm_priced", "spine")

    events = result["events"]
    for e in events:  # the transcript (pytest -s)
        line = f"id: {e['id']}  " if "id" in e else ""
        print(f"{line}event: {e['event']}  data: {orjson.dumps(e['data']).decode()[:160]}")
    assert events[-1]["event"] == "execution.completed", events[-1]
    print(f"usage: {orjson.dumps(body(events[-1])['usage']).decode()}")
    output = body(events[-1])["output_data"]
    assert ANSWER in str(output)
    progress = [e for e in events if e["event"] == "execution.node_progress"]
    assert len(progress) >= 2, [e["event"] for e in events]
    assert all("id" not in e for e in progress)  # live only: never replayed
    assert "".join(p["data"]["text"] or "" for p in progress) == ANSWER
    trail = await api.http.get(
        f"/api/v1/executions/{result['id']}/events", headers=api.auth(user["api_key"])
    )
    assert "node_progress" not in trail.text

    usage = node_usage(result)
    assert usage.model == MODEL and usage.output_tokens == len(ANSWER.split(" "))
    charge = expected_charge(1, usage)
    assert result["detail"]["usage"]["charged"] == charge
    assert result["detail"]["usage"]["overshoot"] == 0
    profile = await me(api, user["api_key"], 50 - charge)
    assert profile["credits"] == 50 - charge
    assert profile["tokens"] == {"input": usage.input_tokens, "output": usage.output_tokens}
    # the budget bounded the model's output: (20 reserved − 1 base) credits at 100 / 1,000
    (request,) = server.requests_for(prompt + "spine")
    assert request.body["max_tokens"] == min(400, 19 * 1000 // 100)


async def test_a_users_own_priced_flow_reserves_max_credits_over_its_base(
    stacked: Stacked,
) -> None:
    """The gateway reserves ``max_credits`` with the flow's price as the base (gateway →
    auth → orchestrator); the run pays the base and its tokens, the rest comes back."""
    api, server = stacked.api, stacked.openai
    prompt = "Mine: "
    server.script(prompt + "own", Text("A tenant's own flow, priced by its author."))
    user = await api.create_user(credits=30)
    key = user["api_key"]
    await define(api, "my_priced", "llm", prompt, key, cost=3, max_credits=20, pricing=PRICING)

    result = await run(api, key, "my_priced", "own")

    started = body(of_type(result, "execution.started"))
    assert (started["credits_reserved"], started["base_credits"]) == (20, 3)
    charge = expected_charge(3, node_usage(result))
    assert result["detail"]["usage"]["charged"] == charge < 20
    assert (await me(api, key, 30 - charge))["credits"] == 30 - charge


async def test_a_tenants_unpriced_flow_pays_the_operators_token_floor(stacked: Stacked) -> None:
    """A tenant cannot run the platform's model for free by leaving ``pricing`` out: its
    flow runs at the operator's floor, within the price plus the allowance (10)."""
    api, server = stacked.api, stacked.openai
    prompt = "Free ride? "
    server.script(prompt + "no", Text(ANSWER))
    user = await api.create_user(credits=30)
    key = user["api_key"]
    await define(api, "my_unpriced", "llm", prompt, key)

    result = await run(api, key, "my_unpriced", "no")

    started = body(of_type(result, "execution.started"))
    assert (started["credits_reserved"], started["base_credits"]) == (1 + 10, 1)
    assert started["flow"]["pricing"] == TENANT_FLOOR  # the pinned definition says so
    usage = node_usage(result)
    charge = 1 + whole_credits(credits_for({"*": FLOOR_PRICE}, usage))
    assert charge > 1 and result["detail"]["usage"]["charged"] == charge
    assert (await me(api, key, 30 - charge))["credits"] == 30 - charge


async def test_flow_validation_refuses_unbounded_pricing_and_node_endpoints(
    stacked: Stacked,
) -> None:
    api = stacked.api
    h = api.auth((await api.create_user(credits=5))["api_key"])
    unbounded = {
        "flow_id": "unbounded",
        "pricing": PRICING,
        "nodes": [{"id": "a", "agent_id": "llm"}],
    }
    endpoint = {
        "flow_id": "endpoint",
        "nodes": [{"id": "ask", "agent_id": "llm", "config": {"base_url": "http://10.1.1.1"}}],
    }
    for flow, where in (
        (unbounded, "api: max_credits: missing: a flow with pricing must set max_credits"),
        (endpoint, "api: node 'ask': config.base_url: a node config may not set a model's"),
    ):
        r = await api.http.post("/api/v1/flows", json=flow, headers=h)
        assert r.status_code == 422 and r.json()["error_code"] == "INVALID_FLOW", r.text
        (problem,) = r.json()["problems"]
        assert problem.startswith(where), problem
        assert "10.1.1.1" not in r.text


async def test_the_anthropic_agent_runs_a_flow_through_the_stack(stacked: Stacked) -> None:
    api, server = stacked.api, stacked.anthropic
    prompt = "Say it the Claude way: "
    server.script(prompt + "kafka", Text("Kafka keeps the log; the log keeps the truth."))
    await define(api, "llm_claude", "llm-claude", prompt, max_credits=10, pricing=PRICING)
    user = await api.create_user(credits=20)

    result = await run(api, user["api_key"], "llm_claude", "kafka")

    assert result["events"][-1]["event"] == "execution.completed"
    usage = node_usage(result)
    assert usage.model == CLAUDE and usage.input_tokens > 0
    assert (await me(api, user["api_key"], 20 - expected_charge(1, usage)))[
        "credits"
    ] == 20 - expected_charge(1, usage)


async def test_provider_errors_retry_then_fail_clearly(stacked: Stacked) -> None:
    api, server = stacked.api, stacked.openai
    prompt = "Flaky: "
    server.script(prompt + "once", Text("fine after one 429"), fail=(Fail(429),))
    server.script(prompt + "never", Text("unreachable"), fail=(Fail(500, times=None),))
    await define(api, "llm_flaky", "llm", prompt, max_credits=10, pricing=PRICING)
    user = await api.create_user(credits=30)

    retried = await run(api, user["api_key"], "llm_flaky", "once")
    assert retried["events"][-1]["event"] == "execution.completed"
    assert len(server.requests_for(prompt + "once")) == 2
    paid = expected_charge(1, node_usage(retried))

    failed = await run(api, user["api_key"], "llm_flaky", "never")
    end = failed["events"][-1]
    assert end["event"] == "execution.failed", end
    message = body(end)["error_message"]
    assert "openai" in message and MODEL in message and "500" in message
    assert "unreachable" not in str(failed["events"])  # never made-up output
    # no tokens were used by the failed run: it pays nothing (docs/credits.md)
    assert (await me(api, user["api_key"], 30 - paid))["credits"] == 30 - paid


async def test_an_overshoot_is_recorded_never_charged(stacked: Stacked) -> None:
    api, server = stacked.api, stacked.openai
    prompt = "Ramble: "
    # the server ignores max_tokens, as a model's input can overshoot a budget too
    server.script(prompt + "on", Text(ANSWER))
    await define(api, "llm_tight", "llm", prompt, cost=1, max_credits=2, pricing=PRICING)
    user = await api.create_user(credits=5)

    result = await run(api, user["api_key"], "llm_tight", "on")

    assert result["events"][-1]["event"] == "execution.completed"
    charge = expected_charge(1, node_usage(result))
    assert charge > 2
    usage = result["detail"]["usage"]
    assert (usage["charge"], usage["charged"], usage["overshoot"]) == (charge, 2, charge - 2)
    assert (await me(api, user["api_key"], 3))["credits"] == 3


async def test_an_exhausted_budget_fails_without_calling_the_model(stacked: Stacked) -> None:
    api, server = stacked.api, stacked.openai
    prompt = "Nothing left: "
    server.script(prompt + "x", Text("never sent"))
    await define(api, "llm_broke", "llm", prompt, cost=3, max_credits=3, pricing=PRICING)
    user = await api.create_user(credits=5)

    result = await run(api, user["api_key"], "llm_broke", "x")

    end = result["events"][-1]
    assert end["event"] == "execution.failed"
    assert "budget" in body(end)["error_message"]
    assert server.requests_for(prompt + "x") == []
    assert (await me(api, user["api_key"], 5))["credits"] == 5  # failed, no tokens: nothing


async def test_fifty_concurrent_priced_runs_on_a_budget_for_about_ten(stacked: Stacked) -> None:
    api, server = stacked.api, stacked.openai
    prompt = "Meter: "
    server.script(prompt + "load", Text(ANSWER))
    await define(api, "llm_metered", "llm", prompt, cost=1, max_credits=10, pricing=PRICING)
    user = await api.create_user(credits=100, rate_limit=1000)
    key = user["api_key"]

    async def one() -> dict[str, Any] | int:
        r = await api.execute(key, "llm_metered", {"topic": "load"})
        if r.status_code != 200:
            assert r.status_code == 402, r.text
            assert r.json()["error_code"] == "INSUFFICIENT_CREDITS"
            return 402
        return await follow(api, key, r.json()["execution_id"])

    outcomes = await asyncio.gather(*(one() for _ in range(50)))

    runs = [o for o in outcomes if isinstance(o, dict)]
    refused = [o for o in outcomes if o == 402]
    assert len(runs) + len(refused) == 50
    assert all(r["events"][-1]["event"] == "execution.completed" for r in runs)
    charges = [expected_charge(1, node_usage(r)) for r in runs]
    assert len(set(charges)) == 1  # the same answer costs the same
    assert 10 <= len(runs) < 50
    profile = await me(api, key, 100 - sum(charges))
    print(  # the note's figures (pytest -s)
        f"metering: {len(runs)} completed, {len(refused)} refused (402), each charged "
        f"{charges[0]} of 10 reserved, balance 100 -> {profile['credits']}, "
        f"tokens {profile['tokens']}"
    )
    assert profile["credits"] == 100 - sum(charges) >= 0
    for r in runs:  # each exactly what the policy says, none past its reservation
        assert r["detail"]["usage"]["charged"] == charges[0] <= 10
