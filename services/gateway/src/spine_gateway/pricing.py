"""What an execution costs (docs/credits.md): a system flow costs what the admin set; a
user's own flow at least the operator's minimum per execution plus a minimum per agent
node — its ``cost`` can raise the price, never lower it, so a tenant cannot run the
platform's agents for free by writing ``cost: 0``. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from spine_contracts import FlowDefinition
from spine_contracts.access import SYSTEM


@dataclass(frozen=True)
class Pricing:
    min_per_execution: int = 1
    min_per_agent_node: int = 0

    def floor(self, flow: FlowDefinition) -> int:
        agent_nodes = sum(1 for node in flow.nodes if node.agent_id is not None)
        return self.min_per_execution + self.min_per_agent_node * agent_nodes

    def price(self, flow: FlowDefinition, *, owner: str) -> int:
        if owner == SYSTEM:
            return flow.cost
        return max(flow.cost, self.floor(flow))

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
