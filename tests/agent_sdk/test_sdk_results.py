"""What a handler returns or raises becomes exactly one well-formed AgentResult."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from spine_agent import (
    Agent,
    AgentInfo,
    NeedsInput,
    Task,
    TaskFailed,
    describe_error,
    result_for,
)
from spine_agent.testing import task_message
from spine_contracts import AgentResult, parse, to_bytes

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _task(**kw: Any) -> Any:
    return task_message(
        "tester",
        execution_id="exec-1",
        node_id="n1",
        attempt=2,
        correlation_id="corr-1",
        tenant_id="user-1",
        trace=TRACE,
        **kw,
    )


def _roundtrip(result: AgentResult) -> AgentResult:
    again = parse(to_bytes(result))
    assert isinstance(again, AgentResult)
    assert again == result
    return again


def test_success_carries_output_ids_and_context() -> None:
    task = _task()
    result = _roundtrip(result_for(task, "tester", {"a": 1, "b": [1.5, "x"]}, duration_ms=12.5))
    assert result.data.status == "success"
    assert result.data.output == {"a": 1, "b": [1.5, "x"]}
    assert (result.data.execution_id, result.data.node_id, result.data.attempt) == (
        "exec-1",
        "n1",
        2,
    )
    assert result.data.agent_id == "tester"
    assert result.data.metrics == {"duration_ms": 12.5}
    assert result.causation_id == str(task.message_id)
    assert (result.correlation_id, result.tenant_id, result.trace) == ("corr-1", "user-1", TRACE)


def test_json_types_are_normalised() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    ident = uuid.UUID(int=7)
    result = result_for(_task(), "t", {"when": when, "id": ident, "t": (1, 2)}, duration_ms=1)
    assert result.data.output == {"when": when.isoformat(), "id": str(ident), "t": [1, 2]}


def test_exception_is_an_error_result_with_type_and_message() -> None:
    result = _roundtrip(result_for(_task(), "t", ValueError("boom"), duration_ms=1))
    assert result.data.status == "error"
    assert result.data.error_message == "ValueError: boom"
    assert result.data.output == {}
    assert describe_error(KeyError()) == "KeyError"


def test_task_failed_keeps_its_message_and_may_carry_an_output() -> None:
    usage = {"model": "m", "input_tokens": 12, "output_tokens": 3}
    failed = TaskFailed("openai model 'm': HTTP 500: down", output={"usage": usage})
    result = _roundtrip(result_for(_task(), "t", failed, duration_ms=1))
    assert result.data.status == "error"
    assert result.data.error_message == "openai model 'm': HTTP 500: down"
    assert result.data.output == {"usage": usage}  # metering counts failed, paid work
    assert result_for(_task(), "t", TaskFailed("no"), duration_ms=1).data.output == {}
    # an output that cannot travel is dropped; the error itself still arrives
    odd = TaskFailed("bad", output={"x": math.nan})
    result = _roundtrip(result_for(_task(), "t", odd, duration_ms=1))
    assert result.data.error_message == "bad" and result.data.output == {}


@pytest.mark.parametrize(
    "outcome",
    [NeedsInput("What is your income?", ["income"]), NeedsInput("Why?")],
)
def test_needs_input_carries_question_and_fields(outcome: NeedsInput) -> None:
    result = _roundtrip(result_for(_task(), "t", outcome, duration_ms=1))
    assert result.data.status == "needs_input"
    assert result.data.question == outcome.question
    assert result.data.missing_fields == outcome.missing_fields
    assert result.data.output == {}


def test_a_question_may_carry_usage_and_drops_what_cannot_travel() -> None:
    usage = {"model": "m", "input_tokens": 3, "output_tokens": 5}
    asked = result_for(_task(), "t", NeedsInput("Why?", output={"usage": usage}), duration_ms=1)
    assert _roundtrip(asked).data.output == {"usage": usage}
    odd = result_for(_task(), "t", NeedsInput("Why?", output={"x": object()}), duration_ms=1)
    assert odd.data.status == "needs_input" and odd.data.output == {}


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        (None, "handler returned NoneType, expected a dict"),
        ([1, 2], "handler returned list, expected a dict"),
        ("text", "handler returned str, expected a dict"),
        ({"s": {1, 2}}, "not JSON-serialisable"),
        ({"o": object()}, "not JSON-serialisable"),
        ({1: "int key"}, "not JSON-serialisable"),
        ({"x": math.nan}, "JSON cannot represent"),
        ({"x": [1.0, math.inf]}, "JSON cannot represent"),
    ],
)
def test_output_that_is_not_a_json_dict_is_an_error(output: object, problem: str) -> None:
    result = _roundtrip(result_for(_task(), "t", output, duration_ms=1))
    assert result.data.status == "error"
    assert result.data.error_message is not None
    assert result.data.error_message.startswith("InvalidOutput: ")
    assert problem in result.data.error_message


def test_long_error_messages_are_truncated() -> None:
    result = result_for(_task(), "t", RuntimeError("x" * 10_000), duration_ms=1)
    assert result.data.error_message is not None
    assert len(result.data.error_message) <= 4000


def test_task_exposes_the_orchestrators_payload() -> None:
    deadline = datetime(2030, 1, 1, tzinfo=UTC)
    message = _task(
        input={"user_message": "hi"},
        dependencies={"zoe": {"applicant": {"name": "Ana"}}},
        conversation=[
            {"role": "agent", "content": "name?"},
            {"role": "user", "content": {"name": "Ana"}},
        ],
        config={"risk_threshold": 0.5, "max_turns": 3},
        node_type="input",
        deadline=deadline,
    )
    task = Task.from_message(message)
    assert (task.execution_id, task.node_id, task.attempt) == ("exec-1", "n1", 2)
    assert task.idempotency_key == "exec-1:n1:2"
    assert task.input == {"user_message": "hi"}
    assert task.dependencies == {"zoe": {"applicant": {"name": "Ana"}}}
    assert task.user_turns() == [{"name": "Ana"}]
    assert task.config == {"risk_threshold": 0.5, "max_turns": 3}
    assert task.node_type == "input"
    assert task.deadline == deadline
    assert task.message is message
    assert (task.correlation_id, task.tenant_id) == ("corr-1", "user-1")


def test_task_tolerates_a_sparse_payload() -> None:
    message = _task()
    bare = message.model_copy(update={"data": message.data.model_copy(update={"payload": {}})})
    task = Task.from_message(bare)
    assert (task.input, task.dependencies, task.conversation, task.node_type) == ({}, {}, (), None)


def test_handler_must_be_async() -> None:
    agent = Agent(AgentInfo(agent_id="t"))
    with pytest.raises(TypeError):
        agent.handler(lambda task: {})  # type: ignore[arg-type,return-value]


def test_agent_always_registers_as_kafka_transport() -> None:
    agent = Agent(AgentInfo(agent_id="t", transport="http", endpoint="http://x"))
    assert agent.info.transport == "kafka"
    assert agent.info.agent_id == "t"
    with pytest.raises(ValueError):
        Agent(AgentInfo(agent_id="t"), concurrency=0)
