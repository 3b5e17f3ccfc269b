"""What starting a flow reserves (docs/credits.md, DESIGN §14): the price as before, and for
a flow with ``pricing`` its ``max_credits`` — never less than that price, which the
orchestrator charges as the base beside the tokens."""

from __future__ import annotations

import pytest
from spine_contracts import FlowDefinition, FlowNode
from spine_contracts.access import SYSTEM
from spine_contracts.metering import TokenPrice, price_for
from spine_gateway.pricing import Pricing, Reservation, merged_pricing

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


#: the operator's token floor for tenants' flows: 2/8 per 1,000 for "big", 1/4 for any other
TOKEN_FLOOR = Pricing(
    min_per_execution=1,
    token_floor={"big": TokenPrice(input=2, output=8), "*": TokenPrice(input=1, output=4)},
    token_allowance=10,
)


def test_a_tenants_unpriced_flow_pays_the_floor_within_the_allowance() -> None:
    bare = flow(cost=0, priced=False)
    running = TOKEN_FLOOR.effective(bare, owner="u1")
    assert running.pricing == TOKEN_FLOOR.token_floor
    assert running.max_credits == 1 + 10  # the price (the floor per execution) + allowance
    assert TOKEN_FLOOR.reservation(running, owner="u1") == Reservation(11, base_credits=1)
    # a system flow is the admin's to price: untouched
    assert TOKEN_FLOOR.effective(bare, owner=SYSTEM) is bare
    # no floor set: a tenant's flow runs as written
    assert FLOOR.effective(bare, owner="u1") is bare


def test_a_tenants_own_prices_never_go_below_the_floor() -> None:
    cheap = FlowDefinition(
        flow_id="f",
        nodes=NODES,
        pricing={"big": TokenPrice(input=0, output=100), "small": TokenPrice(input=0, output=0)},
        max_credits=30,
    )
    running = TOKEN_FLOOR.effective(cheap, owner="u1")
    assert running.pricing == {
        "big": TokenPrice(input=2, output=100),  # each part the higher
        "small": TokenPrice(input=1, output=4),  # the floor's "*" covers it
        "*": TokenPrice(input=1, output=4),
    }
    assert running.max_credits == 30  # its own bound stays


@pytest.mark.parametrize(
    ("own", "floor"),
    [
        ({}, {"*": TokenPrice(input=1, output=1)}),
        ({"m": TokenPrice(input=3, output=0)}, {"*": TokenPrice(input=1, output=2)}),
        ({"*": TokenPrice(input=5, output=5)}, {"m": TokenPrice(input=9, output=1)}),
    ],
)
def test_merged_prices_are_the_higher_for_every_model(
    own: dict[str, TokenPrice], floor: dict[str, TokenPrice]
) -> None:
    merged = merged_pricing(own, floor)
    for model in ("m", "other", "*"):
        got = price_for(merged, model)
        parts = [p for p in (price_for(own, model), price_for(floor, model)) if p is not None]
        if not parts:
            assert got is None
            continue
        assert got == TokenPrice(
            input=max(p.input for p in parts), output=max(p.output for p in parts)
        )
