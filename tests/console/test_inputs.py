"""The run form's and the answer form's input, as the gateway wants it."""

from __future__ import annotations

from typing import Any

import pytest
from spine_console.inputs import (
    InputError,
    answer_input,
    declared_fields,
    form_fields,
    questions,
    questions_key,
    run_input,
)

CREDIT = {
    "nodes": [
        {"id": "zoe", "type": "input", "config": {"required_fields": ["name", "income"]}},
        {"id": "eddie", "type": "processor", "config": {"required_fields": []}},
        {"id": "more", "type": "input", "config": {"required_fields": ["income", "debts"]}},
        {"id": "odd", "type": "input", "config": None},
    ]
}


def test_a_flow_declares_its_input_nodes_required_fields() -> None:
    assert declared_fields(CREDIT) == ["name", "income", "debts"]
    assert declared_fields({"nodes": [{"id": "a", "type": "processor"}]}) == []
    assert declared_fields({}) == []


def test_only_prefixed_non_empty_fields_are_taken() -> None:
    form = [("csrf", "t"), ("field.name", " Ana "), ("field.income", ""), ("field.", "x")]
    assert form_fields(form) == {"name": "Ana"}


def test_run_input_is_the_json_object_with_the_fields_over_it() -> None:
    assert run_input({"name": "Ana"}, '{"name": "x", "n": 1}') == {"name": "Ana", "n": 1}
    assert run_input({}, "") == {}
    with pytest.raises(InputError, match="not valid JSON"):
        run_input({}, "{bad")
    with pytest.raises(InputError, match="JSON object"):
        run_input({}, "[1, 2]")


def test_an_answer_needs_something_and_carries_free_text_as_user_message() -> None:
    assert answer_input({"income": "6000"}, "") == {"income": "6000"}
    assert answer_input({}, " amount: 10 ") == {"user_message": "amount: 10"}
    with pytest.raises(InputError):
        answer_input({}, "   ")


def test_questions_are_the_waiting_nodes_and_their_key_changes_per_turn() -> None:
    nodes: dict[str, dict[str, Any]] = {
        "zoe": {
            "status": "waiting_input",
            "pending_input": {
                "question": "Income?",
                "missing_fields": ["income"],
                "turn": 2,
                "expires_at": None,
            },
        },
        "eddie": {"status": "pending", "pending_input": None},
        "stale": {"status": "running", "pending_input": {"question": "old"}},
    }
    asked = questions(nodes)
    assert [(q.node_id, q.fields, q.turn) for q in asked] == [("zoe", ["income"], 2)]
    assert questions_key(asked) == "zoe:2"
    assert questions_key(questions({})) == "-"
