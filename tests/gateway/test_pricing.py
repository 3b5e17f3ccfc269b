"""What starting a flow reserves (docs/credits.md, DESIGN §14): the price as before, and for
a flow with ``pricing`` its ``max_credits`` — never less than that price, which the
orchestrator charges as the base beside the tokens."""

from __future__ import annotations

import pytest
from spine_contracts import FlowDefinition, FlowNode
from spine_contracts.access import SYSTEM
from spine_contracts.metering import TokenPrice
from spine_gateway.pricing import Pricing, Reservation

NODES = (FlowNode(id="a", agent_id="llm"), FlowNode(id="b", agent_id="llm", depends_on=("a",)))
PRICED = {"*": TokenPrice(input=1, output=2)}
#: a user's flow costs at least 1 + 2 per agent node: 5 here
FLOOR = Pricing(min_per_execution=1, min_per_agent_node=2)


def flow(cost: int, max_credits: int | None = None, priced: bool = True) -> FlowDefinition:
    return FlowDefinition(
        flow_id="f",
        nodes=NODES,
        cost=cost,
        pricing=PRICED if priced else {},
        max_credits=max_credits,
    )


@pytest.mark.parametrize(
    ("owner", "cost", "max_credits", "expected"),
    [
        (SYSTEM, 3, 40, Reservation(amount=40, base_credits=3)),
        (SYSTEM, 3, 3, Reservation(amount=3, base_credits=3)),
        ("u1", 3, 40, Reservation(amount=40, base_credits=5)),  # base: the floor
        ("u1", 3, 4, Reservation(amount=5, base_credits=5)),  # never below the price
        ("u1", 9, 20, Reservation(amount=20, base_credits=9)),
    ],
)
def test_a_priced_flow_reserves_max_credits_above_its_price(
    owner: str, cost: int, max_credits: int, expected: Reservation
) -> None:
    assert FLOOR.reservation(flow(cost, max_credits), owner=owner) == expected


@pytest.mark.parametrize(("owner", "amount"), [(SYSTEM, 3), ("u1", 5)])
def test_an_unpriced_flow_reserves_its_price_with_no_base(owner: str, amount: int) -> None:
    # max_credits without pricing changes nothing: there are no tokens to reserve for
    reserve = FLOOR.reservation(flow(3, 40, priced=False), owner=owner)
    assert reserve == Reservation(amount=amount, base_credits=None)
    assert reserve.amount == FLOOR.price(flow(3, priced=False), owner=owner)
