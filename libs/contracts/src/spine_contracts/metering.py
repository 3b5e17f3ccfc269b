"""Credits per token (DESIGN §14, docs/credits.md): the shapes and the arithmetic.

A flow may declare ``pricing`` — credits per 1,000 input and output tokens, per model, ``"*"``
for any model not named — and ``max_credits``, what is reserved when the execution starts.
Agents report what a model used in their result's ``output["usage"]``
(:class:`TokenUsage`); the orchestrator prices it (:func:`credits_for`) and gives every task
the budget that is left (:class:`TokenBudget`), from which a model agent sets ``max_tokens``
(:func:`max_output_tokens`). Pure: no I/O, shared by the orchestrator, the gateway and the
agent SDK so that all three count alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: the pricing key that covers every model the flow does not name
ANY_MODEL = "*"


class TokenPrice(BaseModel):
    """Credits per 1,000 tokens of one model."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    input: float = Field(ge=0, le=1_000_000, description="credits per 1,000 input tokens")
    output: float = Field(ge=0, le=1_000_000, description="credits per 1,000 output tokens")


class TokenUsage(BaseModel):
    """What one model call (or one node's calls) used, as an agent reports it."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=200)
    input_tokens: int = Field(ge=0, le=1_000_000_000)
    output_tokens: int = Field(ge=0, le=1_000_000_000)


class TokenBudget(BaseModel):
    """Carried by a task of a priced flow: the credits still free for tokens, and the prices
    they buy tokens at. Parallel nodes each see the whole remainder, so together they may
    overshoot it; the overshoot is recorded, never charged past the reservation."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    credits: float = Field(ge=0)
    pricing: dict[str, TokenPrice] = Field(default_factory=dict)


def price_for(pricing: Mapping[str, TokenPrice], model: str) -> TokenPrice | None:
    """The price of ``model``: its own entry, else ``"*"``, else none (unpriced)."""
    return pricing.get(model) or pricing.get(ANY_MODEL)


def usage_in(output: Mapping[str, Any]) -> TokenUsage | None:
    """The usage a result's output reports, if it reports one that is well formed."""
    raw = output.get("usage")
    if not isinstance(raw, Mapping):
        return None
    try:
        return TokenUsage.model_validate(raw)
    except ValidationError:
        return None


def credits_for(pricing: Mapping[str, TokenPrice], usage: TokenUsage) -> float:
    """What ``usage`` costs in credits (fractional; an execution's sum is rounded up once).
    An unpriced model costs nothing: the flow's author chose what to price."""
    price = price_for(pricing, usage.model)
    if price is None:
        return 0.0
    return (usage.input_tokens * price.input + usage.output_tokens * price.output) / 1000


def whole_credits(amount: float) -> int:
    """Fractional credits as charged: rounded up, with a tolerance for float noise."""
    return max(0, math.ceil(amount - 1e-9))


def max_output_tokens(budget: TokenBudget, model: str) -> int | None:
    """The most output tokens ``budget`` pays for with ``model`` (``None``: no bound — the
    model is unpriced or its output is free). Input tokens are not known before the call,
    so a call may still overshoot by its input's price; that is recorded, not charged."""
    price = price_for(budget.pricing, model)
    if price is None or price.output <= 0:
        return None
    return max(0, math.floor(budget.credits * 1000 / price.output + 1e-9))
