"""eddie: the documented formula, its monotonicity, decisions by threshold, clear errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from spine_agent import Task
from spine_agent.testing import task_message
from spine_demo_agents import eddie
from spine_demo_agents.eddie import InvalidApplication, decide, score_application

money = st.floats(min_value=1, max_value=1e6, allow_nan=False, allow_infinity=False)
debts = st.floats(min_value=0, max_value=1e5, allow_nan=False, allow_infinity=False)
terms = st.integers(min_value=1, max_value=480)
factor = st.floats(min_value=1, max_value=10, allow_nan=False)


def _task(
    input: dict[str, Any] | None = None,  # noqa: A002
    dependencies: dict[str, Any] | None = None,
    **config: Any,
) -> Task:
    return Task.from_message(
        task_message("eddie", input=input, dependencies=dependencies, config=config)
    )


def test_worked_example() -> None:
    a = score_application(income=3000, amount=10_000, term_months=24, debts=0)
    # payment 416.67; DTI 0.1389 -> afford 0.7685; LTI 0.2778 -> size 0.8611
    assert a.monthly_payment == 416.67
    assert a.debt_to_income == 0.1389
    assert a.loan_to_annual_income == 0.2778
    assert a.score == round(
        0.7 * (1 - (10_000 / 24 / 3000) / 0.6) + 0.3 * (1 - 10_000 / 36_000 / 2), 4
    )
    assert a.score == 0.7963
    assert a.decision == "approve"
    assert len(a.reasons) == 4 and "approve" in a.reasons[-1]


def test_unaffordable_loan_is_rejected() -> None:
    a = score_application(income=2000, amount=20_000, term_months=12, debts=300)
    assert a.debt_to_income > 0.6
    assert a.score == round(0.3 * (1 - (20_000 / 24_000) / 2), 4)
    assert a.decision == "reject"


@given(income=money, more=factor, amount=money, term=terms, debt=debts)
def test_more_income_never_lowers_the_score(
    income: float, more: float, amount: float, term: int, debt: float
) -> None:
    low = score_application(income=income, amount=amount, term_months=term, debts=debt)
    high = score_application(income=income * more, amount=amount, term_months=term, debts=debt)
    assert high.score >= low.score


@given(income=money, amount=money, term=terms, debt=debts, extra=debts)
def test_more_debts_never_raise_the_score(
    income: float, amount: float, term: int, debt: float, extra: float
) -> None:
    base = score_application(income=income, amount=amount, term_months=term, debts=debt)
    worse = score_application(income=income, amount=amount, term_months=term, debts=debt + extra)
    assert worse.score <= base.score


@given(income=money, amount=money, more=factor, term=terms, longer=terms, debt=debts)
def test_larger_amounts_never_help_and_longer_terms_never_hurt(
    income: float, amount: float, more: float, term: int, longer: int, debt: float
) -> None:
    base = score_application(income=income, amount=amount, term_months=term, debts=debt)
    bigger = score_application(income=income, amount=amount * more, term_months=term, debts=debt)
    stretched = score_application(
        income=income, amount=amount, term_months=term + longer, debts=debt
    )
    assert bigger.score <= base.score
    assert stretched.score >= base.score
    assert 0.0 <= base.score <= 1.0


@given(
    score=st.floats(min_value=0, max_value=1, allow_nan=False),
    threshold=st.floats(min_value=0, max_value=1, allow_nan=False),
)
def test_decision_follows_the_threshold(score: float, threshold: float) -> None:
    decision = decide(score, threshold)
    if score >= threshold:
        assert decision == "approve"
    elif score >= threshold - 0.25:
        assert decision == "review"
    else:
        assert decision == "reject"


def test_threshold_from_config_changes_the_decision() -> None:
    deps = {"zoe": {"applicant": {"income": 3000, "amount": 10_000, "term_months": 24}}}
    run = lambda **cfg: asyncio.run(eddie.handle(_task(None, deps, **cfg)))  # noqa: E731
    assert run()["decision"] == "approve"  # 0.7963 vs 0.7
    assert run(risk_threshold=0.9)["decision"] == "review"  # >= 0.65
    assert run(risk_threshold=1.0)["decision"] == "review"  # still >= 0.75
    out = run(risk_threshold=0.5)
    assert set(out) >= {"score", "decision", "reasons", "monthly_payment", "debt_to_income"}
    assert out["risk_threshold"] == 0.5


def test_dependency_values_win_over_the_execution_input() -> None:
    task = _task(
        {"income": 100, "amount": 10_000, "term_months": 24, "debts": 50},
        {"zoe": {"applicant": {"name": "Ana", "income": 3000}, "message": "done"}},
    )
    out = asyncio.run(eddie.handle(task))
    expected = score_application(income=3000, amount=10_000, term_months=24, debts=50)
    assert out == expected.as_output()


def test_reads_plain_input_and_user_message() -> None:
    task = _task({"user_message": "income: 3000\namount: 10000\nterm: 24"})
    out = asyncio.run(eddie.handle(task))
    assert out["score"] == 0.7963


@pytest.mark.parametrize(
    ("input", "message"),
    [
        ({}, "cannot score without income, amount, term_months"),
        ({"income": 3000, "amount": 10_000}, "cannot score without term_months"),
        ({"income": "lots", "amount": 10_000, "term_months": 12}, "income must be a number"),
        ({"income": 3000, "amount": -5, "term_months": 12}, "amount must be greater than 0"),
        ({"income": 3000, "amount": 5, "term_months": 0}, "whole number of months"),
        ({"income": 3000, "amount": 5, "term_months": 12, "debts": -1}, "cannot be negative"),
    ],
)
def test_bad_inputs_are_clear_errors(input: dict[str, Any], message: str) -> None:  # noqa: A002
    with pytest.raises(InvalidApplication, match=message):
        asyncio.run(eddie.handle(_task(input)))


@pytest.mark.parametrize("threshold", [1.5, -0.1, "high", True])
def test_bad_threshold_is_an_error(threshold: object) -> None:
    with pytest.raises(InvalidApplication, match="risk_threshold"):
        asyncio.run(
            eddie.handle(
                _task({"income": 1, "amount": 1, "term_months": 1}, risk_threshold=threshold)
            )
        )
