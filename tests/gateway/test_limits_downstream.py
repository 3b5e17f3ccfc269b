"""The gateway's input limit is real: the largest execute it accepts, run through auth's and
the orchestrator's own decisions, yields a ``StartExecution``, an ``ExecutionStarted``, a
snapshot and first tasks that each fit in one Kafka message — for a one-node flow and for
the largest flow there is (every node an entry point, ids of the longest). One byte more is
a 413. Pure: the services' domains, no broker (docs/limits.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from spine_auth.domain import decide as auth_decide
from spine_contracts import (
    CreateUser,
    ExecutionStarted,
    FlowDefinition,
    FlowNode,
    Message,
    ReserveCredits,
    StartExecution,
    to_bytes,
)
from spine_flows import MAX_NODES
from spine_gateway.errors import PayloadTooLarge
from spine_gateway.limits import check_message_size, execution_allowance, message_budget
from spine_kafka.clients import DEFAULT_MAX_MESSAGE_BYTES, Outgoing
from spine_kafka.limits import max_value_bytes
from spine_orchestrator.domain import Environment
from spine_orchestrator.encodings import Encodings
from spine_orchestrator.limits import decide_within, kept

MAX_VALUE = max_value_bytes(DEFAULT_MAX_MESSAGE_BYTES)
TRACE = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
EXECUTION = "e" * 128  # ids of the longest the gateway takes
USER = "u" * 128


def one_node() -> FlowDefinition:
    return FlowDefinition(flow_id="one", nodes=(FlowNode(id="a", agent_id="echo"),))


def widest() -> FlowDefinition:
    """MAX_NODES nodes, every one dispatched at the start, ids of 128 characters."""
    nodes = tuple(FlowNode(id=f"{i:03d}" + "n" * 125, agent_id="a" * 128) for i in range(MAX_NODES))
    return FlowDefinition(flow_id="f" * 128, nodes=nodes)


def reserve(flow: FlowDefinition, text: str) -> ReserveCredits:
    """What ``POST /flows/execute`` publishes (executions.py), with ``text`` as the input."""
    return ReserveCredits.build(
        correlation_id=EXECUTION,
        tenant_id=USER,
        trace=TRACE,
        actor="key_0123456789abcdef",
        user_id=USER,
        execution_id=EXECUTION,
        amount=1,
        flow=flow,
        flow_version=flow.content_hash(),
        input_data={"text": text},
        metadata={},
        request_id="r" * 32,
    )


def largest_accepted(flow: FlowDefinition) -> ReserveCredits:
    """The execute whose message is exactly at the gateway's budget for ``flow``."""
    budget = message_budget(MAX_VALUE, execution_allowance(n.id for n in flow.nodes))
    empty = len(to_bytes(reserve(flow, "")))
    cmd = reserve(flow, "x" * (budget - empty))
    assert len(to_bytes(cmd)) == budget
    return cmd


def started_by_auth(cmd: ReserveCredits) -> StartExecution:
    create = CreateUser.build(
        user_id=USER, email="a@example.com", credits=5, rate_limit=60, key_hash="k" * 64
    )
    account = auth_decide(None, create).state
    [start] = auth_decide(account, cmd).commands
    assert isinstance(start, StartExecution)
    return start


def records(messages: list[Message], key: str) -> list[int]:
    """Each message's size as the producer counts it: value, key, headers, framing."""
    return [Outgoing("topic", key, m).size() for m in messages]


@pytest.mark.parametrize("flow", [one_node(), widest()], ids=["one-node", "widest"])
def test_the_largest_execute_the_gateway_accepts_fits_all_the_way(flow: FlowDefinition) -> None:
    cmd = largest_accepted(flow)
    allowance = execution_allowance(n.id for n in flow.nodes)
    check_message_size(to_bytes(cmd), MAX_VALUE, "input_data (with the flow)", allowance)

    start = started_by_auth(cmd)
    env = Environment(
        now=datetime(2026, 1, 1, tzinfo=UTC),
        agent_availability=lambda _a: "active",
        evaluate_condition=lambda *_: True,
    )
    encodings = Encodings(checked=True)
    limit = encodings.limit(MAX_VALUE)
    assert limit is not None
    decision = decide_within(None, start, env, limit)

    assert isinstance(decision.events[0], ExecutionStarted)  # started, not refused
    assert len(decision.tasks) == len(flow.nodes)  # every entry point dispatched
    assert decision.state is not None and not decision.state.terminal
    snapshot = encodings.snapshot(kept(decision.state))
    produced: list[Any] = [start, *decision.events, *(t.message for t in decision.tasks)]
    sizes = [len(to_bytes(m)) for m in [*produced, snapshot]]
    assert max(sizes) <= MAX_VALUE, sizes
    assert max(records([*produced, snapshot], EXECUTION)) <= DEFAULT_MAX_MESSAGE_BYTES


@pytest.mark.parametrize("flow", [one_node(), widest()], ids=["one-node", "widest"])
def test_one_byte_more_is_refused_with_413(flow: FlowDefinition) -> None:
    cmd = largest_accepted(flow)
    bigger = reserve(flow, cmd.data.input_data["text"] + "x")
    allowance = execution_allowance(n.id for n in flow.nodes)
    with pytest.raises(PayloadTooLarge) as raised:
        check_message_size(to_bytes(bigger), MAX_VALUE, "input_data (with the flow)", allowance)
    assert raised.value.status == 413
    assert raised.value.message.startswith("input_data (with the flow) too large: ")
