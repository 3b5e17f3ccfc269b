"""``parse`` returns the right class or raises the right ContractError; envelopes propagate."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from spine_contracts import (
    MESSAGE_TYPES,
    AgentMessage,
    AgentResult,
    ContractError,
    ExecutionStarted,
    FireTimer,
    FlowDefinition,
    FlowNode,
    InvalidMessage,
    Message,
    NodeCompleted,
    NodeConfig,
    StartExecution,
    UndecodableMessage,
    UnknownMessageType,
    UnsupportedVersion,
    UsageRecorded,
    codec,
    parse,
    parse_as,
    register_upcaster,
    to_bytes,
)

FLOW = FlowDefinition(flow_id="echo", nodes=(FlowNode(id="a", agent_id="echo"),))
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def agent_result(**overrides: Any) -> AgentResult:
    fields: dict[str, Any] = dict(
        execution_id="exec-1", node_id="a", attempt=1, agent_id="echo", status="success"
    )
    return AgentResult.build(**{**fields, **overrides})


def as_dict(message: Message) -> dict[str, Any]:
    return orjson.loads(to_bytes(message))


def raw(obj: Any) -> bytes:
    return orjson.dumps(obj)


# --- decoding failures ---------------------------------------------------------------------


def test_every_decoding_error_is_a_contract_error_and_a_value_error() -> None:
    for error in (UndecodableMessage, UnknownMessageType, UnsupportedVersion, InvalidMessage):
        assert issubclass(error, ContractError)
    assert issubclass(ContractError, ValueError)


@pytest.mark.parametrize(
    "payload", [b"", b"\xff\xfe garbage", b"{not json", b'{"type": "agent.result"', b"\x00"]
)
def test_garbage_bytes_are_undecodable(payload: bytes) -> None:
    with pytest.raises(UndecodableMessage):
        parse(payload)


@pytest.mark.parametrize(
    "payload", [b"[]", b'[{"type": "agent.result"}]', b'"text"', b"42", b"null"]
)
def test_json_that_is_not_an_object_is_undecodable(payload: bytes) -> None:
    with pytest.raises(UndecodableMessage):
        parse(payload)


@pytest.mark.parametrize("message_type", ["no.such.type", "", 42, None])
def test_unknown_type_is_rejected(message_type: Any) -> None:
    obj = {**as_dict(agent_result()), "type": message_type}
    with pytest.raises(UnknownMessageType):
        parse(raw(obj))


def test_missing_type_is_unknown() -> None:
    obj = as_dict(agent_result())
    del obj["type"]
    with pytest.raises(UnknownMessageType):
        parse(raw(obj))


def test_newer_version_is_unsupported() -> None:
    obj = {**as_dict(agent_result()), "version": AgentResult.VERSION + 1}
    with pytest.raises(UnsupportedVersion, match="newer"):
        parse(raw(obj))


@pytest.mark.parametrize("version", [0, -1, "1", 1.5])
def test_malformed_version_is_invalid(version: Any) -> None:
    obj = {**as_dict(agent_result()), "version": version}
    with pytest.raises(InvalidMessage):
        parse(raw(obj))


def test_missing_body_field_is_invalid() -> None:
    obj = as_dict(agent_result())
    del obj["data"]["execution_id"]
    with pytest.raises(InvalidMessage, match="execution_id"):
        parse(raw(obj))


def test_missing_body_is_invalid() -> None:
    obj = as_dict(agent_result())
    del obj["data"]
    with pytest.raises(InvalidMessage):
        parse(raw(obj))


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        ("data", "attempt", "first"),
        ("data", "attempt", 0),
        ("data", "status", "great"),
        ("data", "output", ["not", "a", "dict"]),
        (None, "message_id", "not-a-uuid"),
        (None, "occurred_at", "yesterday"),
        (None, "occurred_at", "2024-05-01T12:00:00"),
    ],
)
def test_wrong_field_type_is_invalid(where: str | None, field: str, value: Any) -> None:
    obj = as_dict(agent_result())
    (obj[where] if where else obj)[field] = value
    with pytest.raises(InvalidMessage):
        parse(raw(obj))


@pytest.mark.parametrize("where", ["envelope", "body"])
def test_extra_field_is_invalid(where: str) -> None:
    obj = as_dict(agent_result())
    (obj if where == "envelope" else obj["data"])["surprise"] = 1
    with pytest.raises(InvalidMessage, match="surprise"):
        parse(raw(obj))


def test_parse_accepts_every_buffer_type() -> None:
    message = agent_result()
    data = to_bytes(message)
    for form in (data, bytearray(data), memoryview(data), data.decode()):
        assert parse(form) == message


def test_parse_as_checks_the_class() -> None:
    data = to_bytes(agent_result())
    assert isinstance(parse_as(data, AgentResult), AgentResult)
    assert isinstance(parse_as(data, (AgentMessage, AgentResult)), AgentResult)
    with pytest.raises(InvalidMessage, match="agent.result"):
        parse_as(data, AgentMessage)


# --- values JSON cannot carry ----------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused_when_building(bad: float) -> None:
    # orjson would write them as null: silently None, or undecodable on the reader's side.
    with pytest.raises(ValidationError):
        NodeCompleted.build(execution_id="e", seq=0, node_id="a", attempt=1, duration_ms=bad)
    with pytest.raises(ValidationError):
        UsageRecorded.build(
            user_id="u", request_id="r", method="GET", path="/", status_code=200, duration_ms=bad
        )
    with pytest.raises(ValidationError):
        agent_result(metrics={"tokens": bad})
    with pytest.raises(ValidationError):
        FlowDefinition(flow_id="f", nodes=(FlowNode(id="a"),), timeout=bad)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValidationError):
        FireTimer.build(execution_id="e", timer_id="t", kind="retry", due_at=datetime(2024, 5, 1))
    timer = FireTimer.build(
        execution_id="e", timer_id="t", kind="retry", due_at=datetime(2024, 5, 1, tzinfo=UTC)
    )
    assert parse(to_bytes(timer)) == timer


# --- immutability ----------------------------------------------------------------------------


def test_messages_bodies_and_flows_are_frozen() -> None:
    message = agent_result()
    with pytest.raises(ValidationError):
        message.correlation_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        message.data.status = "error"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        FLOW.flow_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        FLOW.nodes[0].agent_id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        NodeConfig(retries=1).retries = 2  # type: ignore[misc]


# --- envelope propagation --------------------------------------------------------------------


def test_build_propagates_context_from_its_cause() -> None:
    start = StartExecution.build(
        correlation_id="req-1",
        tenant_id="user-1",
        trace=TRACEPARENT,
        execution_id="exec-1",
        user_id="user-1",
        flow=FLOW,
        flow_version=FLOW.version,
    )

    started = ExecutionStarted.build(
        cause=start,
        execution_id="exec-1",
        seq=0,
        user_id="user-1",
        flow_id=FLOW.flow_id,
        flow_version=FLOW.version,
        flow=FLOW,
    )

    assert started.correlation_id == "req-1"
    assert started.tenant_id == "user-1"
    assert started.trace == TRACEPARENT
    assert started.causation_id == str(start.message_id)
    assert started.message_id != start.message_id
    assert started.version == ExecutionStarted.VERSION
    assert started.occurred_at.utcoffset() is not None


def test_build_without_correlation_starts_the_chain_at_the_cause() -> None:
    first = agent_result()
    assert first.correlation_id is None and first.causation_id is None

    second = NodeCompleted.build(cause=first, execution_id="e", seq=1, node_id="a", attempt=1)

    assert second.correlation_id == str(first.message_id)
    assert second.causation_id == str(first.message_id)


def test_explicit_context_wins_over_the_cause() -> None:
    cause = agent_result(correlation_id="req-1", tenant_id="u1", trace=TRACEPARENT)
    effect = NodeCompleted.build(
        cause=cause,
        correlation_id="req-2",
        tenant_id="u2",
        trace="00-x",
        execution_id="e",
        seq=1,
        node_id="a",
        attempt=1,
    )
    assert (effect.correlation_id, effect.tenant_id, effect.trace) == ("req-2", "u2", "00-x")
    assert effect.causation_id == str(cause.message_id)


def test_no_body_field_is_shadowed_by_build_keywords() -> None:
    reserved = {"cause", "correlation_id", "tenant_id", "trace"}
    for cls in MESSAGE_TYPES.values():
        body = cls.model_fields["data"].annotation
        assert isinstance(body, type)
        assert not reserved & set(body.model_fields), cls.__name__


# --- versions and upcasting ------------------------------------------------------------------


@pytest.fixture
def agent_result_v2(monkeypatch: pytest.MonkeyPatch) -> None:
    """AgentResult as if v2 renamed ``output`` (v1: ``result``); restored after the test."""
    monkeypatch.setattr(AgentResult, "VERSION", 2)
    monkeypatch.setattr(codec, "_UPCASTERS", dict(codec._UPCASTERS))


def v1_agent_result() -> dict[str, Any]:
    obj = as_dict(agent_result(output={"text": "hi"}))
    obj["version"] = 1
    obj["data"]["result"] = obj["data"].pop("output")
    return obj


@pytest.mark.usefixtures("agent_result_v2")
def test_older_version_is_upcast_to_the_current_one() -> None:
    @register_upcaster("agent.result", 1)
    def rename_result(data: dict[str, Any]) -> dict[str, Any]:
        data = dict(data)
        data["output"] = data.pop("result", {})
        return data

    message = parse(raw(v1_agent_result()))

    assert isinstance(message, AgentResult)
    assert message.version == 2
    assert message.data.output == {"text": "hi"}
    assert parse(to_bytes(message)) == message


@pytest.mark.usefixtures("agent_result_v2")
def test_older_version_without_an_upcaster_is_unsupported() -> None:
    with pytest.raises(UnsupportedVersion, match="no upcaster"):
        parse(raw(v1_agent_result()))


@pytest.mark.usefixtures("agent_result_v2")
def test_a_message_built_without_a_version_carries_the_current_one() -> None:
    assert agent_result().version == 2
    data = agent_result().data.model_dump()
    assert AgentResult(data=data).version == 2  # type: ignore[arg-type]


def test_upcasting_fixture_restored_global_state() -> None:
    # Runs after the upcasting tests (file order): nothing of theirs may leak.
    assert AgentResult.VERSION == 1
    assert ("agent.result", 1) not in codec._UPCASTERS
    assert agent_result().version == 1
