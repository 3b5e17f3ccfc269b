"""How many output tokens one model call may ask for, given the task's token budget.

Pure: the tool loop calls :func:`round_max_tokens` before every round with what the
completion has used so far, so a budget shared by several rounds shrinks as they are paid
for. The arithmetic is :mod:`spine_contracts.metering`'s, so the kit bounds a call with the
same prices the orchestrator charges it at.
"""

from __future__ import annotations

from spine_contracts.metering import (
    TokenBudget,
    TokenUsage,
    credits_for,
    max_output_tokens,
    price_for,
)

from .errors import BudgetExhausted
from .turns import Usage


def credits_left(budget: TokenBudget, spent: Usage) -> float:
    """The budget's credits minus what ``spent`` costs at its prices (never below 0)."""
    # constructed, not validated: the name is ours and the counts are the provider's sums
    usage = TokenUsage.model_construct(
        model=spent.model, input_tokens=spent.input_tokens, output_tokens=spent.output_tokens
    )
    return max(0.0, budget.credits - credits_for(budget.pricing, usage))


def round_max_tokens(cap: int, budget: TokenBudget | None, spent: Usage) -> int:
    """``min(cap, output tokens the budget left still pays for)`` for ``spent.model``.

    No budget, an unpriced model or free output: ``cap``. A budget that pays for no output
    token raises :class:`BudgetExhausted` — the call is not made, rather than made for
    nothing or charged past what was reserved.
    """
    if budget is None:
        return cap
    left = credits_left(budget, spent)
    affordable = max_output_tokens(budget.model_copy(update={"credits": left}), spent.model)
    if affordable is None:
        return cap
    if affordable < 1:
        price = price_for(budget.pricing, spent.model)
        per_1000 = price.output if price is not None else 0.0
        raise BudgetExhausted(
            f"token budget exhausted: {left:g} credits left, model {spent.model!r} costs "
            f"{per_1000:g} per 1,000 output tokens"
        )
    return min(cap, affordable)
