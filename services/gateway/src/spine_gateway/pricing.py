"""What an execution costs (docs/credits.md): a system flow costs what the admin set; a
user's own flow at least the operator's minimum per execution plus a minimum per agent
node — its ``cost`` can raise the price, never lower it, so a tenant cannot run the
platform's agents for free by writing ``cost: 0``. The same holds for tokens: with an
operator's token floor, a user's own flow pays at least the floor's price per model
whatever ``pricing`` it wrote (or none), within a ``max_credits`` of its own or the price
plus the operator's allowance. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from spine_contracts import FlowDefinition
from spine_contracts.access import SYSTEM
from spine_contracts.metering import TokenPrice, price_for


@dataclass(frozen=True)
class Pricing:
    min_per_execution: int = 1
    min_per_agent_node: int = 0
    #: the least a user's own flow pays per model's tokens (``SPINE_TENANT_TOKEN_PRICING``;
    #: empty: none) and what it reserves for them when it sets no ``max_credits``
    token_floor: Mapping[str, TokenPrice] = field(default_factory=dict)
    token_allowance: int = 10

    def floor(self, flow: FlowDefinition) -> int:
        agent_nodes = sum(1 for node in flow.nodes if node.agent_id is not None)
        return self.min_per_execution + self.min_per_agent_node * agent_nodes

    def price(self, flow: FlowDefinition, *, owner: str) -> int:
        if owner == SYSTEM:
            return flow.cost
        return max(flow.cost, self.floor(flow))

    def effective(self, flow: FlowDefinition, *, owner: str) -> FlowDefinition:
        """``flow`` as it runs: a user's own flow under an operator's token floor gets
        each model's price raised to the floor's and a ``max_credits`` (its own, else the
        price plus the allowance); the execution's pinned definition shows both."""
        if owner == SYSTEM or not self.token_floor:
            return flow
        pricing = merged_pricing(flow.pricing, self.token_floor)
        price = self.price(flow, owner=owner)
        limit = flow.max_credits if flow.max_credits is not None else price + self.token_allowance
        return flow.model_copy(update={"pricing": pricing, "max_credits": max(limit, price)})

    def reservation(self, flow: FlowDefinition, *, owner: str) -> Reservation:
        """What starting ``flow`` reserves, and the base price the orchestrator charges
        for it (``None`` without pricing: the reservation is the price, as before)."""
        price = self.price(flow, owner=owner)
        if not flow.pricing:
            return Reservation(amount=price, base_credits=None)
        return Reservation(amount=max(price, flow.max_credits or 0), base_credits=price)


@dataclass(frozen=True)
class Reservation:
    amount: int
    base_credits: int | None


def merged_pricing(
    own: Mapping[str, TokenPrice], floor: Mapping[str, TokenPrice]
) -> dict[str, TokenPrice]:
    """Per model, the higher of the two prices (each part apart); a model neither names
    falls to the higher ``"*"`` (none: unpriced, as before)."""
    merged: dict[str, TokenPrice] = {}
    for model in dict.fromkeys([*own, *floor]):
        prices = [p for p in (price_for(own, model), price_for(floor, model)) if p is not None]
        merged[model] = TokenPrice(
            input=max(p.input for p in prices), output=max(p.output for p in prices)
        )
    return merged
