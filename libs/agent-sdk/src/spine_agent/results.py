"""Turn what a handler did (returned or raised) into the :class:`AgentResult` to publish.

Pure: the Kafka loop calls :func:`result_for` and publishes what it gets. A handler can
never crash the agent through its output: anything that is not a JSON-able dict becomes
an error result naming the problem. A :class:`TaskFailed` may carry an output (a paid
model's ``usage``) onto its error result, since metering counts failed work too.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from spine_contracts import AgentMessage, AgentResult

from .task import NeedsInput, TaskFailed

#: Longest ``error_message`` sent; a traceback-sized message helps nobody on the bus.
MAX_ERROR_CHARS = 4000


class InvalidOutput(TypeError):
    """The handler returned something that cannot travel as an agent output."""


def describe_error(error: BaseException) -> str:
    """``"<ExceptionType>: message"`` (just the type when the message is empty)."""
    text = str(error).strip()
    described = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return described[:MAX_ERROR_CHARS]


def _check_finite(value: Any, path: str) -> None:
    # orjson writes NaN and infinities as null: refuse them instead of corrupting the output.
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidOutput(f"output{path} is {value!r}, which JSON cannot represent")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_finite(item, f"{path}[{index}]")


def jsonable_output(value: object) -> dict[str, Any]:
    """The output as plain JSON types, or :class:`InvalidOutput` explaining why not."""
    if not isinstance(value, dict):
        raise InvalidOutput(f"handler returned {type(value).__name__}, expected a dict")
    try:
        _check_finite(value, "")
        encoded = orjson.dumps(value)
    except InvalidOutput:
        raise
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidOutput(f"handler output is not JSON-serialisable: {exc}") from exc
    decoded: dict[str, Any] = orjson.loads(encoded)
    return decoded


def _kept(output: dict[str, Any]) -> dict[str, Any]:
    """What a question or an error reports beside itself; dropped if it cannot travel as
    JSON (the question or the error itself is what must arrive)."""
    try:
        return jsonable_output(output)
    except InvalidOutput:
        return {}


def result_for(
    task: AgentMessage,
    agent_id: str,
    outcome: object,
    *,
    duration_ms: float,
) -> AgentResult:
    """The result of ``task`` for a returned value or a raised exception (``outcome``)."""
    data = task.data
    common: dict[str, Any] = {
        "execution_id": data.execution_id,
        "node_id": data.node_id,
        "attempt": data.attempt,
        "agent_id": agent_id,
        "metrics": {"duration_ms": round(duration_ms, 3)},
    }
    if isinstance(outcome, NeedsInput):
        return AgentResult.build(
            cause=task,
            status="needs_input",
            question=outcome.question,
            missing_fields=outcome.missing_fields,
            output=_kept(outcome.output),
            **common,
        )
    if isinstance(outcome, TaskFailed):
        kept = _kept(outcome.output)
        return AgentResult.build(
            cause=task,
            status="error",
            error_message=outcome.message[:MAX_ERROR_CHARS],
            output=kept,
            **common,
        )
    if isinstance(outcome, BaseException):
        return AgentResult.build(
            cause=task, status="error", error_message=describe_error(outcome), **common
        )
    try:
        output = jsonable_output(outcome)
    except InvalidOutput as exc:
        return AgentResult.build(
            cause=task, status="error", error_message=describe_error(exc), **common
        )
    return AgentResult.build(cause=task, status="success", output=output, **common)
