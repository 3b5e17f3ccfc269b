"""zoe: reading answers, asking for exactly what is missing, the finished applicant."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from spine_agent import NeedsInput, Task
from spine_agent.testing import task_message
from spine_demo_agents import zoe
from spine_demo_agents.fields import parse_number, parse_user_message


def _task(input: dict[str, Any] | None = None, *answers: Any, **config: Any) -> Task:  # noqa: A002
    conversation: list[dict[str, Any]] = []
    for answer in answers:
        conversation.append({"role": "agent", "content": "question"})
        conversation.append({"role": "user", "content": answer})
    return Task.from_message(
        task_message(
            "zoe", input=input, conversation=conversation, config=config, node_type="input"
        )
    )


def _run(task: Task) -> Any:
    return asyncio.run(zoe.handle(task))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"Name": "Ana", "income": 3000}', {"name": "Ana", "income": 3000}),
        ("name: Ana\nincome: 3000", {"name": "Ana", "income": 3000}),
        ("NAME=Ana; Amount = 12000.50", {"name": "Ana", "amount": 12000.5}),
        ("Monthly income: 2,500\nLoan amount: $ 10,000", {"income": 2500, "amount": 10000}),
        ("term: 24 ; debts: 150.75", {"term_months": 24, "debts": 150.75}),
        ("Full name: 'Ana María'", {"name": "Ana María"}),
        ("income: 3200 EUR", {"income": 3200}),
        ("hello there, I want a loan", {}),
        ("{broken json", {}),
        ("income:", {}),
    ],
)
def test_user_message_parsing(text: str, expected: dict[str, Any]) -> None:
    assert parse_user_message(text) == expected


@pytest.mark.parametrize(
    ("text", "number"),
    [("42", 42), ("-3", -3), ("1,234,567.5", 1234567.5), ("€12", 12), ("1e3", 1000.0)],
)
def test_numbers(text: str, number: float) -> None:
    assert parse_number(text) == number


@pytest.mark.parametrize("text", ["12,34", "abc", "", "1.2.3", "nan", "inf"])
def test_not_numbers(text: str) -> None:
    assert parse_number(text) is None


def test_first_turn_asks_for_every_required_field() -> None:
    outcome = _run(_task({}))
    assert isinstance(outcome, NeedsInput)
    assert outcome.missing_fields == ("name", "income", "amount", "term_months")
    for name in outcome.missing_fields:
        assert name in outcome.question


def test_asks_for_exactly_what_is_missing() -> None:
    outcome = _run(_task({"user_message": "name: Ana\nincome: 3000"}))
    assert isinstance(outcome, NeedsInput)
    assert outcome.missing_fields == ("amount", "term_months")
    assert "Ana" in outcome.question
    assert "amount" in outcome.question and "term_months" in outcome.question
    assert "income" not in outcome.question


def test_fields_accumulate_over_turns_and_later_answers_win() -> None:
    task = _task(
        {"name": "Ana"},
        {"user_message": "income: 1000\namount: 5000"},
        {"income": "3,000"},
        {"user_message": '{"term_months": "24", "debts": 100}'},
    )
    outcome = _run(task)
    assert outcome == {
        "applicant": {
            "name": "Ana",
            "income": 3000.0,
            "amount": 5000.0,
            "term_months": 24,
            "debts": 100.0,
        },
        "message": outcome["message"],
    }
    assert isinstance(outcome["applicant"]["term_months"], int)
    assert "Ana" in outcome["message"]


def test_an_unusable_value_is_asked_again_with_the_reason() -> None:
    outcome = _run(_task({"user_message": "name: Ana\nincome: lots\namount: 0\nterm: 12.5"}))
    assert isinstance(outcome, NeedsInput)
    assert outcome.missing_fields == ("income", "amount", "term_months")
    assert "lots" in outcome.question
    assert "greater than 0" in outcome.question
    assert "whole number" in outcome.question


def test_required_fields_come_from_config() -> None:
    task = _task({"user_message": "email: ana@example.com"}, required_fields=["email", "city"])
    outcome = _run(task)
    assert isinstance(outcome, NeedsInput)
    assert outcome.missing_fields == ("city",)
    done = _run(
        _task(
            {"email": "ana@example.com"},
            {"user_message": "City: Lima"},
            required_fields=["email", "city"],
        )
    )
    assert done["applicant"] == {"email": "ana@example.com", "city": "Lima"}


def test_blank_answers_do_not_erase_earlier_ones() -> None:
    task = _task(
        {"user_message": "name: Ana\nincome: 3000\namount: 9000\nterm_months: 12"},
        {"name": "", "user_message": ""},
    )
    outcome = _run(task)
    assert outcome["applicant"]["name"] == "Ana"


def test_context_and_previous_messages_are_not_fields() -> None:
    outcome = _run(_task({"context": {"x": 1}, "previous_messages": ["a"], "name": "Ana"}))
    assert isinstance(outcome, NeedsInput)
    assert outcome.missing_fields == ("income", "amount", "term_months")
