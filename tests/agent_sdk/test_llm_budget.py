"""A priced flow's token budget bounds every model call: ``max_tokens`` is what the credits
left still pay for, shrinking across tool rounds; no credit for an output token → no call.

The bound is checked where it matters, in the request the provider's server receives (the
real SDK clients against the local fake servers); the arithmetic has its own fast tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
from agent_sdk.llm_servers import Calls, FakeModelServer, Text
from spine_agent import Task
from spine_agent.llm import LLM, BudgetExhausted, ModelHandler, Usage
from spine_agent.llm.budget import credits_left, round_max_tokens
from spine_agent.llm.provider import Provider, TokenCallback
from spine_agent.llm.turns import OutputSpec, Reply, ToolSpec, Turn
from spine_agent.results import result_for
from spine_agent.testing import task_message
from spine_contracts import AgentResult
from spine_contracts.metering import TokenBudget, TokenPrice, TokenUsage, credits_for

KEY = "sk-budget-Secret-0011223344"
MODEL = "fake-model-3"
KINDS = ("openai", "anthropic")


def _budget(credits: float, output: float = 10.0, input_: float = 1.0) -> TokenBudget:
    return TokenBudget(credits=credits, pricing={MODEL: TokenPrice(input=input_, output=output)})


# --- the arithmetic ------------------------------------------------------------------------


def test_no_budget_or_an_unpriced_model_keeps_the_cap() -> None:
    assert round_max_tokens(512, None, Usage(MODEL)) == 512
    other = TokenBudget(credits=0, pricing={"another": TokenPrice(input=1, output=1)})
    assert round_max_tokens(512, other, Usage(MODEL)) == 512
    free_output = _budget(0.0, output=0.0)
    assert round_max_tokens(512, free_output, Usage(MODEL)) == 512


def test_the_budget_lowers_the_cap_never_raises_it() -> None:
    assert round_max_tokens(1024, _budget(0.5), Usage(MODEL)) == 50  # 0.5 credit / 10 per 1,000
    assert round_max_tokens(20, _budget(0.5), Usage(MODEL)) == 20
    star = TokenBudget(credits=2, pricing={"*": TokenPrice(input=0, output=4)})
    assert round_max_tokens(1024, star, Usage(MODEL)) == 500


def test_what_earlier_rounds_cost_is_taken_off() -> None:
    spent = Usage(MODEL, input_tokens=100, output_tokens=20)  # 0.1 + 0.2 credits
    assert credits_left(_budget(0.5), spent) == pytest.approx(0.2)
    assert round_max_tokens(1024, _budget(0.5), spent) == 20
    assert credits_left(_budget(0.1), spent) == 0.0  # overshot: never below zero


def test_a_budget_that_pays_for_no_output_token_refuses_the_call() -> None:
    with pytest.raises(BudgetExhausted) as caught:
        round_max_tokens(1024, _budget(0.009), Usage(MODEL))  # 0.9 of a token
    assert caught.value.message == (
        f"token budget exhausted: 0.009 credits left, model {MODEL!r} costs 10 per 1,000 "
        "output tokens"
    )


# --- against the providers' servers --------------------------------------------------------


class Recording:
    """The real provider, with each reply kept so a test knows what each round cost."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name
        self.replies: list[Reply] = []

    async def reply(
        self,
        *,
        model: str,
        system: str | None,
        turns: Sequence[Turn],
        tools: Sequence[ToolSpec],
        output: OutputSpec | None,
        max_tokens: int,
        temperature: float | None,
        on_token: TokenCallback | None,
    ) -> Reply:
        done = await self.inner.reply(
            model=model,
            system=system,
            turns=turns,
            tools=tools,
            output=output,
            max_tokens=max_tokens,
            temperature=temperature,
            on_token=on_token,
        )
        self.replies.append(done)
        return done

    async def aclose(self) -> None:
        await self.inner.aclose()


def _llm(server: FakeModelServer) -> tuple[LLM, Recording]:
    real = LLM.connect(server.kind, MODEL, api_key=KEY, base_url=server.base_url)
    recording = Recording(real.provider)
    return LLM(recording, MODEL), recording


def _task(prompt: str, budget: TokenBudget | None, **config: Any) -> Task:
    return Task.from_message(
        task_message("llm", config={"prompt": prompt, **config}, budget=budget)
    )


def lookup(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize("kind", KINDS)
async def test_the_request_asks_for_what_the_budget_pays(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    prompt = f"{kind}: budget bound"
    server.script(prompt, Text("Bounded."))
    llm, _ = _llm(server)
    handler = ModelHandler(llm)
    task = _task(prompt, _budget(0.37))  # 37 output tokens at 10 per 1,000
    assert task.budget == _budget(0.37)
    try:
        output = await handler(task)
    finally:
        await llm.aclose()
    [request] = server.requests_for(prompt)
    assert request.body["max_tokens"] == 37
    assert output["text"] == "Bounded."
    # the node config's own cap still applies when it is the lower one
    prompt_capped = f"{kind}: budget above the node cap"
    server.script(prompt_capped, Text("Capped."))
    llm, _ = _llm(server)
    try:
        await ModelHandler(llm)(_task(prompt_capped, _budget(0.37), max_tokens=12))
    finally:
        await llm.aclose()
    [request] = server.requests_for(prompt_capped)
    assert request.body["max_tokens"] == 12


@pytest.mark.parametrize("kind", KINDS)
async def test_each_tool_round_gets_what_is_left_after_the_earlier_ones(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    prompt = f"{kind}: weather with a budget"
    server.script(prompt, Calls((("lookup", {"city": "Lima"}),)), Text("It is sunny."))
    llm, recording = _llm(server)
    budget = _budget(5.0)  # 500 output tokens before anything is spent
    try:
        output = await ModelHandler(llm, tools=[lookup])(_task(prompt, budget))
    finally:
        await llm.aclose()
    first, second = server.requests_for(prompt)
    assert first.body["max_tokens"] == 500
    one = recording.replies[0]
    paid = credits_for(budget.pricing, TokenUsage(model=MODEL, **_tokens(one)))
    assert paid > 0
    assert second.body["max_tokens"] == math.floor((5.0 - paid) * 1000 / 10 + 1e-9)
    assert second.body["max_tokens"] < 500
    # the output reports the node's whole usage: both rounds
    assert output["usage"] == {
        "model": MODEL,
        "input_tokens": sum(r.input_tokens for r in recording.replies),
        "output_tokens": sum(r.output_tokens for r in recording.replies),
    }


@pytest.mark.parametrize("kind", KINDS)
async def test_an_exhausted_budget_fails_the_node_without_a_request(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    prompt = f"{kind}: nothing left"
    server.script(prompt, Text("never sent"))
    llm, _ = _llm(server)
    task = _task(prompt, _budget(0.0))
    try:
        with pytest.raises(BudgetExhausted) as caught:
            await ModelHandler(llm)(task)
    finally:
        await llm.aclose()
    assert server.requests_for(prompt) == []
    assert caught.value.message == (
        f"token budget exhausted: 0 credits left, model {MODEL!r} costs 10 per 1,000 output tokens"
    )
    result = _result(task, caught.value)
    assert result.data.status == "error"
    assert result.data.error_message == caught.value.message
    assert result.data.output == {}  # nothing was used


@pytest.mark.parametrize("kind", KINDS)
async def test_a_budget_spent_mid_loop_fails_with_the_usage_it_paid(
    kind: str, model_servers: dict[str, FakeModelServer]
) -> None:
    server = model_servers[kind]
    prompt = f"{kind}: spent in round one"
    server.script(prompt, Calls((("lookup", {"city": "Quito"}),)), Text("never asked"))
    llm, recording = _llm(server)
    # one credit per token: the first round's input alone costs more than the 3 credits
    task = _task(prompt, _budget(3.0, output=1000.0, input_=1000.0))
    try:
        with pytest.raises(BudgetExhausted) as caught:
            await ModelHandler(llm, tools=[lookup])(task)
    finally:
        await llm.aclose()
    [only] = server.requests_for(prompt)
    assert only.body["max_tokens"] == 3
    assert "token budget exhausted: 0 credits left" in caught.value.message
    paid = {"model": MODEL, **_tokens(recording.replies[0])}
    assert caught.value.usage is not None and caught.value.usage.as_dict() == paid
    result = _result(task, caught.value)
    assert result.data.status == "error"
    assert result.data.output == {"usage": paid}  # the orchestrator charges what was paid


def _tokens(reply: Reply) -> dict[str, int]:
    return {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens}


def _result(task: Task, error: BaseException) -> AgentResult:
    built = result_for(task.message, "llm", error, duration_ms=1.0)
    return AgentResult.model_validate_json(built.model_dump_json())
