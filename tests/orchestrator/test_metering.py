"""Credits per token in the execution state machine (DESIGN §14, docs/credits.md), no I/O:
usage counted from trusted agents only, the budget each task carries, the charge per
outcome capped by the reservation, and the state surviving a snapshot."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from orchestrator.test_domain import result, tasks
from spine_contracts import (
    CancelExecution,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    FireTimer,
    FlowDefinition,
    FlowNode,
    NodeConfig,
    SettleCredits,
    StartExecution,
)
from spine_contracts.messages.executions import ExecutionUsage
from spine_contracts.metering import TokenBudget, TokenPrice
from spine_orchestrator.domain import (
    Decision,
    Environment,
    ExecutionState,
    decide,
    state_from_dict,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
#: 1 credit per 1,000 input tokens, 2 per 1,000 output tokens; the cheap model half that
PRICING = {"big": TokenPrice(input=1, output=2), "*": TokenPrice(input=0.5, output=1)}


def env(owners: dict[str, str | None] | None = None) -> Environment:
    known = {} if owners is None else owners  # read live: a test may change an owner
    return Environment(
        now=T0,
        agent_availability=lambda _a: "active",
        evaluate_condition=lambda _e, _i, _n: True,
        agent_owner=lambda a: known.get(a, "system"),
    )


def node(node_id: str, *deps: str, agent: str = "llm", retries: int = 0) -> FlowNode:
    return FlowNode(id=node_id, agent_id=agent, depends_on=deps, config=NodeConfig(retries=retries))


def flow(*nodes: FlowNode, priced: bool = True) -> FlowDefinition:
    if priced:
        return FlowDefinition(flow_id="f", nodes=nodes, cost=2, pricing=PRICING, max_credits=20)
    return FlowDefinition(flow_id="f", nodes=nodes, cost=2)


def start(f: FlowDefinition, reserved: int = 20, base: int | None = 2) -> StartExecution:
    return StartExecution.build(
        execution_id="e1",
        user_id="u1",
        flow=f,
        flow_version=f.content_hash(),
        credits_reserved=reserved,
        base_credits=base if f.pricing else None,
    )


def usage(model: str = "big", inp: int = 1000, out: int = 1000) -> dict[str, Any]:
    return {"model": model, "input_tokens": inp, "output_tokens": out}


def settle(decision: Decision) -> SettleCredits:
    (command,) = decision.commands
    assert isinstance(command, SettleCredits)
    return command


def ended_usage(decision: Decision) -> ExecutionUsage | None:
    (end,) = [
        e
        for e in decision.events
        if isinstance(e, (ExecutionCompleted, ExecutionFailed, ExecutionCancelled))
    ]
    return end.data.usage


def state(decision: Decision) -> ExecutionState:
    assert isinstance(decision.state, ExecutionState)
    return decision.state


# --- counting ----------------------------------------------------------------------------------


def test_trusted_usage_is_counted_and_priced_per_model() -> None:
    d = decide(None, start(flow(node("a"), node("b", "a"))), env())
    d = decide(d.state, result(tasks(d)[0], output={"usage": usage("big", 1000, 500)}), env())
    s = state(d)
    assert (s.input_tokens, s.output_tokens, s.token_credits) == (1000, 500, 2.0)
    d = decide(d.state, result(tasks(d)[0], output={"usage": usage("small", 2000, 1000)}), env())
    end = ended_usage(d)
    assert end == ExecutionUsage(
        input_tokens=3000, output_tokens=1500, token_credits=4.0, charge=6, charged=6
    )
    assert settle(d).data.charge == 6  # base 2 + tokens 4
    assert (settle(d).data.input_tokens, settle(d).data.output_tokens) == (3000, 1500)


def test_the_users_own_agent_is_trusted_another_users_is_listed_not_counted() -> None:
    # dispatch already refuses another user's agent: an owner that changes or is
    # forgotten while the task runs is what this second line is for
    owners: dict[str, str | None] = {"mine": "u1"}
    e = env(owners)
    f = flow(node("a", agent="mine"), node("b", agent="theirs"), node("c", agent="gone"))
    d = decide(None, start(f), e)
    by_node = {t.data.node_id: t for t in tasks(d)}
    assert set(by_node) == {"a", "b", "c"}
    owners.update(theirs="u2", gone=None)
    d = decide(d.state, result(by_node["a"], output={"usage": usage(out=0)}), e)
    d = decide(d.state, result(by_node["b"], output={"usage": usage(inp=10**6)}), e)
    d = decide(d.state, result(by_node["c"], output={"usage": usage(inp=10**6)}), e)
    end = ended_usage(d)
    assert end is not None
    assert (end.input_tokens, end.output_tokens, end.token_credits) == (1000, 0, 1.0)
    assert end.untrusted == ("theirs", "gone")
    assert settle(d).data.charge == 3


def test_usage_on_an_error_result_is_counted_the_provider_was_paid() -> None:
    d = decide(None, start(flow(node("a", retries=1))), env())
    failed = result(tasks(d)[0], "error", error_message="429", output={"usage": usage()})
    d = decide(d.state, failed, env())
    assert state(d).token_credits == 3.0
    # the retry timer fires, the second attempt fails too, with more tokens
    retry = next(t for t in state(d).timers.values() if t.kind == "retry")
    fire = FireTimer.build(
        execution_id="e1", timer_id=retry.timer_id, kind="retry", node_id="a", due_at=T0
    )
    d = decide(d.state, fire, env())
    (second,) = tasks(d)
    d = decide(
        d.state, result(second, "error", error_message="500", output={"usage": usage()}), env()
    )
    end = ended_usage(d)
    assert end is not None and end.token_credits == 6.0
    # failed: no base price, but the tokens
    assert (end.charge, end.charged, end.overshoot) == (6, 6, 0)
    assert settle(d).data.outcome == "failed" and settle(d).data.charge == 6


def test_a_duplicate_result_counts_its_usage_once() -> None:
    d = decide(None, start(flow(node("a"), node("b", "a"))), env())
    r = result(tasks(d)[0], output={"usage": usage()})
    d = decide(d.state, r, env())
    again = decide(d.state, r, env())
    assert not again.changed and state(again).token_credits == 3.0


def test_malformed_usage_is_ignored() -> None:
    d = decide(None, start(flow(node("a"))), env())
    bad = {"usage": {"model": "big", "input_tokens": -5, "output_tokens": "many"}}
    d = decide(d.state, result(tasks(d)[0], output=bad), env())
    end = ended_usage(d)
    assert end is not None and (end.input_tokens, end.token_credits, end.charge) == (0, 0.0, 2)


# --- the budget ----------------------------------------------------------------------------------


def test_the_budget_shrinks_along_a_chain() -> None:
    d = decide(None, start(flow(node("a"), node("b", "a"), node("c", "b"))), env())
    (a,) = tasks(d)
    assert a.data.budget == TokenBudget(credits=18, pricing=PRICING)  # 20 reserved - base 2
    d = decide(d.state, result(a, output={"usage": usage("big", 2000, 1500)}), env())  # 5
    (b,) = tasks(d)
    assert b.data.budget is not None and b.data.budget.credits == 13
    d = decide(d.state, result(b, output={"usage": usage("big", 10_000, 10_000)}), env())  # 30
    (c,) = tasks(d)
    assert c.data.budget is not None and c.data.budget.credits == 0  # never below zero


def test_an_unpriced_flow_carries_no_budget_and_tokens_cost_nothing() -> None:
    f = flow(node("a"), priced=False)
    d = decide(None, start(f, reserved=2), env())
    (a,) = tasks(d)
    assert a.data.budget is None
    d = decide(d.state, result(a, output={"usage": usage()}), env())
    end = ended_usage(d)  # shown: tokens were reported
    assert end == ExecutionUsage(input_tokens=1000, output_tokens=1000, charge=2, charged=2)
    assert settle(d).data.charge == 2


def test_an_unpriced_run_without_tokens_ends_as_before() -> None:
    d = decide(None, start(flow(node("a"), priced=False), reserved=2), env())
    d = decide(d.state, result(tasks(d)[0], output={"text": "hi"}), env())
    assert ended_usage(d) is None
    assert settle(d).data.charge == 2 and settle(d).data.input_tokens == 0


def test_an_unpriced_model_costs_nothing_in_a_priced_flow() -> None:
    f = FlowDefinition(
        flow_id="f",
        nodes=(node("a"),),
        cost=2,
        pricing={"big": TokenPrice(input=1, output=2)},
        max_credits=20,
    )
    d = decide(None, start(f), env())
    d = decide(d.state, result(tasks(d)[0], output={"usage": usage("other")}), env())
    end = ended_usage(d)
    assert end is not None
    assert (end.input_tokens, end.token_credits, end.charge) == (1000, 0.0, 2)


# --- the charge --------------------------------------------------------------------------------


def test_the_overshoot_is_recorded_never_charged() -> None:
    d = decide(None, start(flow(node("a"))), env())
    d = decide(d.state, result(tasks(d)[0], output={"usage": usage("big", 10_000, 5_000)}), env())
    end = ended_usage(d)  # 2 + 20 = 22 asked of 20 reserved
    assert end is not None and (end.charge, end.charged, end.overshoot) == (22, 20, 2)
    assert settle(d).data.charge == 22  # auth caps it by the reservation


def test_tokens_are_rounded_up_once_per_execution() -> None:
    d = decide(None, start(flow(node("a"), node("b", "a"))), env())
    d = decide(d.state, result(tasks(d)[0], output={"usage": usage("big", 100, 0)}), env())
    d = decide(d.state, result(tasks(d)[0], output={"usage": usage("big", 100, 0)}), env())
    end = ended_usage(d)
    assert end is not None
    assert end.token_credits == pytest.approx(0.2) and end.charge == 3  # 2 + ceil(0.2)


def test_cancelled_pays_the_base_only_after_work_and_the_tokens_always() -> None:
    f = flow(node("a"), node("b", "a"))
    cancel = CancelExecution.build(execution_id="e1", reason="stop")
    # an agent's failed call used tokens, nothing was delivered yet
    d = decide(None, start(f), env())
    d = decide(
        d.state, result(tasks(d)[0], "needs_input", question="?", output={"usage": usage()}), env()
    )
    before = decide(d.state, cancel, env())
    end = ended_usage(before)
    assert end is not None and end.charge == 3  # tokens only
    # a delivered node: base price too
    d = decide(None, start(f), env())
    d = decide(d.state, result(tasks(d)[0], output={"usage": usage()}), env())
    after = decide(d.state, cancel, env())
    end = ended_usage(after)
    assert end is not None and end.charge == 5
    assert settle(after).data.outcome == "cancelled" and settle(after).data.charge == 5


def test_unpriced_charges_are_unchanged() -> None:
    f = flow(node("a"), node("b", "a"), priced=False)
    cancel = CancelExecution.build(execution_id="e1", reason="stop")
    d = decide(None, start(f, reserved=3), env())
    assert settle(decide(d.state, cancel, env())).data.charge == 0
    d = decide(d.state, result(tasks(d)[0]), env())
    assert settle(decide(d.state, cancel, env())).data.charge == 3
    failed = decide(d.state, result(tasks(d)[0], "error", error_message="x"), env())
    assert settle(failed).data.charge == 0 and ended_usage(failed) is None


def test_a_priced_flow_started_without_a_base_price_pays_its_reservation() -> None:
    # a start from before credits per token: the reservation is the base price
    d = decide(None, start(flow(node("a")), reserved=20, base=None), env())
    (a,) = tasks(d)
    assert a.data.budget is not None and a.data.budget.credits == 0
    d = decide(d.state, result(a, output={"usage": usage("big", 1000, 0)}), env())
    end = ended_usage(d)
    assert end is not None and (end.charge, end.charged, end.overshoot) == (21, 20, 1)


def test_the_start_records_the_base_price() -> None:
    d = decide(None, start(flow(node("a"))), env())
    (started,) = [e for e in d.events if isinstance(e, ExecutionStarted)]
    assert (started.data.credits_reserved, started.data.base_credits) == (20, 2)


# --- persistence -------------------------------------------------------------------------------


def test_the_metering_state_survives_a_snapshot() -> None:
    owners: dict[str, str | None] = {}
    e = env(owners)
    d = decide(None, start(flow(node("a"), node("b", agent="theirs"), node("c", "a"))), e)
    by_node = {t.data.node_id: t for t in tasks(d)}
    owners["theirs"] = "u2"
    d = decide(d.state, result(by_node["a"], output={"usage": usage("big", 1234, 567)}), e)
    (c,) = tasks(d)
    d = decide(d.state, result(by_node["b"], output={"usage": usage()}), e)
    s = state(d)
    restored = state_from_dict(orjson.loads(orjson.dumps(s.to_dict())))
    assert restored == s
    assert isinstance(restored, ExecutionState)
    assert (restored.base_credits, restored.untrusted) == (2, ("theirs",))
    # and it decides on as the original would
    ended = decide(restored, result(c, output={"usage": usage()}), e)
    assert ended_usage(ended) == ended_usage(decide(s, result(c, output={"usage": usage()}), e))


def test_a_snapshot_of_older_code_restores_with_no_tokens() -> None:
    d = decide(None, start(flow(node("a"), priced=False), reserved=2), env())
    body = state(d).to_dict()
    for key in ("base_credits", "input_tokens", "output_tokens", "token_credits", "untrusted"):
        del body[key]
    restored = state_from_dict(orjson.loads(orjson.dumps(body)))
    assert isinstance(restored, ExecutionState)
    assert (restored.base_credits, restored.token_credits, restored.untrusted) == (None, 0.0, ())
    done = decide(restored, result(tasks(d)[0]), env())
    assert settle(done).data.charge == 2
