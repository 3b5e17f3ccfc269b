"""The shared arithmetic of credits per token (``spine_contracts.metering``, DESIGN §14):
the orchestrator, the gateway and the agent SDK must count alike."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from spine_contracts.metering import (
    ANY_MODEL,
    TokenBudget,
    TokenPrice,
    TokenUsage,
    credits_for,
    max_output_tokens,
    price_for,
    usage_in,
    whole_credits,
)

BIG = TokenPrice(input=1, output=2)
ANY = TokenPrice(input=0.5, output=1)

prices = st.builds(
    TokenPrice,
    input=st.floats(0, 1000, allow_nan=False),
    output=st.floats(0, 1000, allow_nan=False),
)
tokens = st.integers(0, 10_000_000)


def test_price_for_prefers_the_models_own_entry_then_any() -> None:
    pricing = {"big": BIG, ANY_MODEL: ANY}
    assert price_for(pricing, "big") == BIG
    assert price_for(pricing, "other") == ANY
    assert price_for({"big": BIG}, "other") is None


def test_credits_for_prices_per_thousand_and_an_unpriced_model_is_free() -> None:
    usage = TokenUsage(model="big", input_tokens=1500, output_tokens=250)
    assert credits_for({"big": BIG}, usage) == 2.0
    assert credits_for({"small": BIG}, usage) == 0.0


def test_usage_in_reads_a_well_formed_report_only() -> None:
    good = {"usage": {"model": "m", "input_tokens": 3, "output_tokens": 4, "cached": 9}}
    assert usage_in(good) == TokenUsage(model="m", input_tokens=3, output_tokens=4)
    assert usage_in({}) is None
    assert usage_in({"usage": "lots"}) is None
    assert usage_in({"usage": {"model": "m", "input_tokens": -1, "output_tokens": 0}}) is None
    assert usage_in({"usage": {"model": "", "input_tokens": 1, "output_tokens": 0}}) is None


def test_prices_are_finite_and_not_negative() -> None:
    for bad in ({"input": -1, "output": 0}, {"input": float("inf"), "output": 0}):
        with pytest.raises(ValidationError):
            TokenPrice.model_validate(bad)
    with pytest.raises(ValidationError):
        TokenBudget(credits=-0.5)


def test_whole_credits_rounds_up_but_not_float_noise() -> None:
    assert whole_credits(0) == 0
    assert whole_credits(0.2) == 1
    assert whole_credits(3.0) == 3
    assert whole_credits(0.1 + 0.2 + 2.7) == 3  # 3.0000000000000004
    assert whole_credits(-1) == 0


def test_max_output_tokens_for_an_unpriced_or_free_output_is_unbounded() -> None:
    budget = TokenBudget(credits=1, pricing={"big": BIG, "free": TokenPrice(input=1, output=0)})
    assert max_output_tokens(budget, "big") == 500
    assert max_output_tokens(budget, "other") is None
    assert max_output_tokens(budget, "free") is None
    assert max_output_tokens(TokenBudget(credits=0, pricing={"big": BIG}), "big") == 0


@given(prices, tokens, tokens, tokens, tokens)
def test_credits_for_is_monotone_in_tokens(
    price: TokenPrice, inp: int, out: int, more_in: int, more_out: int
) -> None:
    pricing = {"m": price}
    less = credits_for(pricing, TokenUsage(model="m", input_tokens=inp, output_tokens=out))
    more = credits_for(
        pricing, TokenUsage(model="m", input_tokens=inp + more_in, output_tokens=out + more_out)
    )
    assert 0 <= less <= more


@given(st.floats(0, 1e12, allow_nan=False))
def test_whole_credits_is_the_least_integer_not_below_the_amount(amount: float) -> None:
    whole = whole_credits(amount)
    assert whole >= amount - 1e-9
    assert whole - 1 < amount
    assert whole == math.ceil(amount) or math.isclose(whole, amount, abs_tol=1e-9)


output_prices = st.builds(
    TokenPrice,
    input=st.floats(0, 1000, allow_nan=False),
    output=st.one_of(st.just(0.0), st.floats(0.01, 1000, allow_nan=False)),
)


# bounded so the most tokens a budget buys stays a usage an agent can report (<= 1e9)
@given(output_prices, st.floats(0, 1000, allow_nan=False))
def test_max_output_tokens_never_lets_output_exceed_the_budget(
    price: TokenPrice, credits: float
) -> None:
    budget = TokenBudget(credits=credits, pricing={"m": price})
    limit = max_output_tokens(budget, "m")
    if limit is None:
        assert price.output <= 0
        return
    spent = credits_for({"m": price}, TokenUsage(model="m", input_tokens=0, output_tokens=limit))
    assert spent <= credits + 1e-6 * max(1.0, credits)
    # and it is the most: one more token would not fit
    one_more = credits_for(
        {"m": price}, TokenUsage(model="m", input_tokens=0, output_tokens=limit + 1)
    )
    assert one_more > credits - 1e-6 * max(1.0, credits)
